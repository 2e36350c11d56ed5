"""Fault injection for tests and drills (``learner.fault_crash_at_step``, ``fault_crash_point``).

The learner calls :func:`crash_point` at the places a crash is worth drilling; with the knobs unset
it does nothing. The process is killed with SIGKILL, so no cleanup runs, as in a real node loss; a
marker in the run directory makes each configured crash happen once, so the retried run continues.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from tagpr.config import LearnerConfig

log = logging.getLogger(__name__)


def crash_point(lc: LearnerConfig, point: str, step: int, rank: int, run_dir: Path) -> None:
    """Kill learner rank 0 here if the config asks for a crash at ``point`` of ``step``."""
    if not (lc.fault_crash_at_step and step == lc.fault_crash_at_step and point == lc.fault_crash_point
            and rank == 0):
        return
    marker = run_dir / f"fault-crash-step-{lc.fault_crash_at_step}"
    if marker.exists():
        return
    marker.write_text(point)
    log.warning("fault injection: learner rank 0 killed at step %d (%s)", step, point)
    os.kill(os.getpid(), signal.SIGKILL)
