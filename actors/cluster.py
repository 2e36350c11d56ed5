"""Joining or starting Ray (the one place that calls ``ray.init``), and placing a role's process on CPUs."""

from __future__ import annotations

import os

from tagpr.config import ClusterConfig
from tagpr.errors import TagPRError


def connect(cfg: ClusterConfig, **kwargs):
    """Join ``cfg.address`` (``auto``, ``ray://...``, ``host:port``) or, for ``local``, start Ray here.

    Inside a ``ray job submit`` job, Ray sets ``RAY_ADDRESS``; that wins over the config so the
    job runs on the cluster it was submitted to. Token authentication is left as Ray sets it.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    init_kwargs = {"namespace": cfg.namespace, "log_to_driver": True, **kwargs}
    if address == "local":
        init_kwargs.setdefault("include_dashboard", False)
        if cfg.num_cpus:
            init_kwargs.setdefault("num_cpus", cfg.num_cpus)
    ray.init(address=address, **init_kwargs)
    return ray.get_runtime_context()


def cpus_per_worker(num_workers: int) -> int:
    """CPUs to give each Ray Train worker: an even share of the cluster's free CPUs, at least one.

    Ray sets a worker's torch/OMP thread count from its CPU share, so one CPU per worker would run
    a CPU training loop on one thread however many cores are free.
    """
    import ray

    free = int(ray.available_resources().get("CPU", 1))
    return max(1, free // max(num_workers, 1))


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
