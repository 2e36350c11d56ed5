"""Joining or starting Ray (the one place that calls ``ray.init``), placing a role's process on CPUs,
and a head started with ``ray start`` that can be stopped without touching another Ray on the host."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tagpr.config import ClusterConfig
from tagpr.errors import TagPRError

# Every worker process of a job: Ray Train's print patch off (it tees a worker's print to stdout and
# to the root logger, so each line reached the log twice), and the repeating lines dropped.
WORKER_ENV = {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
              "worker_process_setup_hook": "actors.cluster.quiet_worker_logs"}
# (logger, message prefix) of library lines that repeat without news. Ray Train's placement-group
# cleaner asks the State API every second whether its controller lives; a head started without the
# dashboard has no State API, so it warned once a second for the whole job (and can clean nothing).
REPEATING_LINES = (("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                    "Failed to query Ray Train Controller actor state"),)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_worker_logs() -> None:
    """Ray's ``worker_process_setup_hook`` for this project's jobs: filters :data:`REPEATING_LINES`."""
    for name, prefix in REPEATING_LINES:
        logging.getLogger(name).addFilter(_DropPrefix(prefix))


def connect(cfg: ClusterConfig, **kwargs):
    """Join ``cfg.address`` (``auto``, ``ray://...``, ``host:port``) or, for ``local``, start Ray here.

    Inside a ``ray job submit`` job, Ray sets ``RAY_ADDRESS``; that wins over the config so the
    job runs on the cluster it was submitted to. Token authentication is left as Ray sets it.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    init_kwargs = {"namespace": cfg.namespace, "log_to_driver": True, "runtime_env": WORKER_ENV, **kwargs}
    if address == "local":
        init_kwargs.setdefault("include_dashboard", False)
        if cfg.num_cpus:
            init_kwargs.setdefault("num_cpus", cfg.num_cpus)
    ray.init(address=address, **init_kwargs)
    return ray.get_runtime_context()


def train_scaling(num_workers: int, resources: dict[str, float]):
    """Ray Train's scaling and backend for ``num_workers``: a GPU each (NCCL) when the cluster has GPUs,
    else an even share of the free CPUs (gloo); ``resources`` are added to (or override) each worker's."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    gpu = bool(ray.cluster_resources().get("GPU"))
    per_worker = {**({} if gpu else {"CPU": cpus_per_worker(num_workers)}), **resources}
    return (ScalingConfig(num_workers=num_workers, use_gpu=gpu, resources_per_worker=per_worker or None),
            TorchConfig(backend="nccl" if gpu else "gloo"))


def cpus_per_worker(num_workers: int) -> int:
    """CPUs to give each Ray Train worker: an even share of the cluster's free CPUs, at least one.

    Ray sets a worker's torch/OMP thread count from its CPU share, so one CPU per worker would run
    a CPU training loop on one thread however many cores are free.
    """
    import ray

    free = int(ray.available_resources().get("CPU", 1))
    return max(1, free // max(num_workers, 1))


def use_all_cores() -> None:
    """Size torch's thread pool to the cores this process may run on: Ray sizes it from the worker's
    logical CPU share, which may be fewer (one CPU: one thread on an idle machine) or more (threads
    contending for the same cores)."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))


def pin_cpus(cpus: list[int] | None, what: str) -> None:
    """Run this process, every thread it already has included, on ``cpus`` only (no-op for None).

    Threads started later (torch's OpenMP pool, vLLM's) inherit the mask. ``what`` names the
    config field in the error when this host lacks one of the CPUs.
    """
    if not cpus:
        return
    have = os.sched_getaffinity(0)
    if missing := sorted(set(cpus) - have):
        raise TagPRError(f"{what}: CPUs {missing} are not available to this process (it may use {sorted(have)})")
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), set(cpus))


def entry_point(name: str) -> str:
    """A console script (``ray``, ``tagpr``) of the environment this interpreter runs in."""
    return str(Path(sys.executable).with_name(name))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen (ports picked one
    at a time can repeat, and two Ray components on one port fail ``ray start``)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def pids_matching(predicate: Callable[[bytes], bool]) -> list[int]:
    """This host's processes, but this one, whose command line (``/proc/<pid>/cmdline``) satisfies
    ``predicate``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if predicate((proc / "cmdline").read_bytes()):
                    pids.append(int(proc.name))
            except OSError:  # gone meanwhile
                continue
    return pids


class LocalHead:
    """A Ray head on this host, started with the ``ray`` CLI in a temp dir of its own.

    ``stop()`` ends only the processes whose command line names that temp dir (``ray stop`` would
    end every Ray of this user). With ``autoscaling_config`` (a fake multi-node cluster config,
    ``RAY_FAKE_CLUSTER=1``) the head's autoscaler starts and releases fake nodes; they are pointed
    at this head's port. Token auth follows the environment (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``).
    """

    def __init__(self, num_cpus: int, resources: dict[str, float] | None = None,
                 autoscaling_config: str | Path | None = None, dashboard: bool = False):
        import ray._private.services as services
        import yaml

        self.ip = services.get_node_ip_address()
        self.port, self.metrics_port, self.dashboard_port, *self._agent_ports = free_ports(7)
        self.temp_dir = tempfile.mkdtemp(prefix="tgp-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.num_cpus, self.resources, self.dashboard = num_cpus, resources or {}, dashboard
        self.autoscaling_config = None
        if autoscaling_config:
            spec = yaml.safe_load(Path(autoscaling_config).read_text())
            spec["provider"]["gcs_address"] = self.address
            self.autoscaling_config = Path(self.temp_dir) / "autoscaling.yaml"
            self.autoscaling_config.write_text(yaml.safe_dump(spec))

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        cmd = [entry_point("ray"), "start", "--head", f"--port={self.port}",
               f"--num-cpus={self.num_cpus}", f"--resources={json.dumps(self.resources)}",
               f"--temp-dir={self.temp_dir}", f"--metrics-export-port={self.metrics_port}",
               f"--include-dashboard={str(self.dashboard).lower()}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats",
               # the defaults of these collide with another Ray on the host (its agent holds 52365)
               *(f"--{flag}={port}" for flag, port in zip(("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "runtime-env-agent-port", "ray-client-server-port"),
                                                         self._agent_ports))]
        # jobs submitted here run `python` from PATH: make it this interpreter
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, **(env or {})}
        if self.autoscaling_config:
            cmd.append(f"--autoscaling-config={self.autoscaling_config}")
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode:
            self.stop()
            raise RuntimeError(f"ray start failed ({run.returncode}): {run.stderr[-2000:]}")

    def _pids(self) -> list[int]:
        mine = self.temp_dir.encode()
        return pids_matching(lambda cmdline: mine in cmdline)

    def stop(self, grace_s: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + grace_s
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.5)
