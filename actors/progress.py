"""Progress from anywhere in a job to the driver's console.

Work that counts units (a Ray Train worker's steps, an evaluation's questions) calls
:func:`report`; it reaches a small named actor, the board, that the driver polls and draws
(``tagpr.progress.RunProgress``). The board is named after the job, so concurrent jobs on one
cluster keep theirs apart; where no board exists (tests, a job run without a console) a report
is dropped at the cost of one lookup every ``LOOKUP_EVERY_S``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

LOOKUP_EVERY_S = 5.0
_lookup: dict[str, object] = {"handle": None, "at": float("-inf")}


class ProgressBoard:
    """The latest ``(what, done, total)`` of the job, with a counter so pollers see only changes."""

    def __init__(self) -> None:
        self.state: tuple[int, str, int, int] | None = None

    def update(self, what: str, done: int, total: int) -> None:
        n = self.state[0] + 1 if self.state else 1
        self.state = (n, what, done, total)

    def get(self) -> tuple[int, str, int, int] | None:
        return self.state


def board_name() -> str:
    import ray

    return f"tagpr-progress-{ray.get_runtime_context().get_job_id()}"


def report(what: str, done: int, total: int) -> None:
    """Tell the job's board that ``done`` of ``total`` ``what`` are finished (never raises, never blocks)."""
    import ray

    if not ray.is_initialized():
        return
    now = time.monotonic()
    if _lookup["handle"] is None and now - _lookup["at"] > LOOKUP_EVERY_S:
        _lookup["at"] = now
        try:
            _lookup["handle"] = ray.get_actor(board_name())
        except ValueError:
            return
    if (handle := _lookup["handle"]) is not None:
        try:
            handle.update.remote(what, done, total)
        except Exception:  # the board went away with its driver: stop reporting to it
            _lookup["handle"] = None


def dev_progress(phase: str) -> Callable[[int, int], None]:
    """The ``on_task`` callback of ``evaluate_policy`` that reports scored dev tasks as ``phase``."""
    return lambda done, total: report(f"dev tasks scored ({phase})", done, total)


class BoardFollower:
    """Driver side: once Ray is up, create the board and pass each change to ``on_update``."""

    def __init__(self, on_update: Callable[[str, int, int], None], every_s: float = 0.5):
        self.on_update, self.every_s = on_update, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress-board")
        self._board = None

    def __enter__(self) -> BoardFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=5)
        if self._board is not None and ray.is_initialized():
            ray.kill(self._board)

    def _run(self) -> None:
        import ray

        seen = 0
        while not self._stop.wait(self.every_s):
            try:
                if not ray.is_initialized():
                    continue
                if self._board is None:
                    self._board = ray.remote(ProgressBoard).options(
                        name=board_name(), num_cpus=0, get_if_exists=True,
                        scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                            ray.get_runtime_context().get_node_id(), soft=False)).remote()
                state = ray.get(self._board.get.remote(), timeout=5)
                if state and state[0] != seen:
                    seen = state[0]
                    self.on_update(*state[1:])
            except Exception:  # Ray shutting down between steps, or a slow poll: try again next tick
                self._board = None if not ray.is_initialized() else self._board
