"""The console view of ``tagpr run``: a bar over the pipeline's steps and one for the current
step's own units (training steps, epochs, dev questions), with log lines printed above them.

The units come from wherever the work runs (Ray Train workers, rollout tasks, this process)
through ``actors.progress``; this module only draws. On a console that is not a terminal (a
``ray job submit`` log, CI) rich draws the bars once at the end and the log lines stay plain.
"""

from __future__ import annotations

import time
from typing import Any


class RunProgress:
    """Context manager around a rich ``Progress``; ``log`` prints above the bars. ``redirect_output``:
    this process's Python-level prints also go above the bars (when the libraries' lines are on the
    console); otherwise they stay where ``sys.stdout`` points (``tagpr.console.LogCapture``'s file)."""

    def __init__(self, steps: list[str], console: Any, redirect_output: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console, self.steps = console, steps
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False,
                                  redirect_stdout=redirect_output, redirect_stderr=redirect_output)
        self._pipeline = self._progress.add_task("pipeline", total=len(steps))
        self._unit = None
        self._step_start = 0.0

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def log(self, message: str) -> None:
        self._progress.console.print(message)

    def start_step(self, name: str) -> None:
        index = self.steps.index(name) if name in self.steps else 0
        self._progress.update(self._pipeline, description=f"step {index + 1}/{len(self.steps)}: {name}")
        self._drop_unit()
        self._step_start = time.perf_counter()

    def finish_step(self, name: str) -> None:
        self._drop_unit()
        self._progress.advance(self._pipeline)
        self.log(f"[bold]{name}[/bold] done in {time.perf_counter() - self._step_start:.1f}s")

    def update(self, what: str, done: int, total: int) -> None:
        """The current step's unit bar: ``done`` of ``total`` ``what`` (a new ``what`` starts a new bar)."""
        if self._unit is None or self._progress.tasks[self._unit_index()].description != f"  {what}":
            self._drop_unit()
            self._unit = self._progress.add_task(f"  {what}", total=max(total, 1))
        self._progress.update(self._unit, completed=done, total=max(total, 1))

    def _unit_index(self) -> int:
        return next(i for i, t in enumerate(self._progress.tasks) if t.id == self._unit)

    def _drop_unit(self) -> None:
        if self._unit is not None:
            self._progress.remove_task(self._unit)
            self._unit = None
