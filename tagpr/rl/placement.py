"""Which cores the RL roles run on when they share one node (``cluster.cpu_layout: auto``).

A rollout worker and a learner that float over the same cores both run their full thread pools
whenever both work, and each evicts the other's caches; on separate cores each keeps its own. The
layout is only taken where the node has the cores for it: a cluster declaring more logical CPUs
than the node has cores shares them on purpose, and the OS then places the threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def role_cores(cores: Sequence[int], logical_cpus: float, rollout_workers: int, rollout_cpus: float,
               learner_workers: int) -> tuple[list[int], list[int]] | None:
    """The rollout workers' cores (``rollout_cpus`` each, rounded up, the lowest ids) and the learner's
    (all the rest, at least one per learner worker); None where the node lacks them."""
    cores = sorted(cores)
    rollout = rollout_workers * math.ceil(rollout_cpus)
    if rollout < 1 or len(cores) < logical_cpus or len(cores) < rollout + learner_workers:
        return None
    return cores[:rollout], cores[rollout:]
