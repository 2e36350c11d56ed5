"""What a job's console shows: its bars and its own lines, with the libraries' log lines in a file.

Ray (its driver-side C++ core and, through ``log_to_driver``, every worker's output), Ray Train,
Serve, vLLM, DeepSpeed and transformers all write to this process's standard output and error, from
Python and from native code, so filtering loggers cannot quiet them. :class:`LogCapture` points file
descriptors 1 and 2 at ``<log dir>/console.log`` for the job's length and hands out a rich console
on the terminal the process started with. The job's own warnings (loggers ``tagpr.*``, ``actors.*``,
``services.*`` at WARNING and above) still reach that console. ``--verbose``, or
``TAGPR_LOG_LEVEL`` set to ``debug`` or ``info``, leaves the streams as they are.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

LEVEL_ENV = "TAGPR_LOG_LEVEL"
LOG_NAME = "console.log"
OWN_LOGGERS = ("tagpr", "actors", "services")


def verbose_from_env() -> bool:
    """Whether ``TAGPR_LOG_LEVEL`` asks for the libraries' lines on the console."""
    return os.environ.get(LEVEL_ENV, "").strip().lower() in ("debug", "info")


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Any):
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(f"[yellow]warning[/yellow] {record.name}: {record.getMessage()}",
                               highlight=False, soft_wrap=True)
        except Exception:  # a console that went away must not break the job
            self.handleError(record)


class LogCapture:
    """Context manager: while inside, fds 1 and 2 write to ``log_dir/console.log`` (unless ``verbose``);
    ``console`` draws on the original standard output either way, or on standard error with
    ``to_stderr`` (for a command whose standard output is its result, such as JSON)."""

    def __init__(self, log_dir: str | Path, verbose: bool = False, to_stderr: bool = False):
        self.path = Path(log_dir) / LOG_NAME
        self.verbose, self.to_stderr = verbose, to_stderr
        self.console: Any = None
        self._saved: tuple[int, int] | None = None
        self._terminal = None
        self._handler: logging.Handler | None = None

    def __enter__(self) -> LogCapture:
        from rich.console import Console

        if self.verbose:
            self.console = Console(highlight=False, stderr=self.to_stderr)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        log_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        self._terminal = os.fdopen(os.dup(self._saved[1 if self.to_stderr else 0]), "w", buffering=1, encoding="utf-8",
                                   errors="replace")
        self.console = Console(file=self._terminal, highlight=False)
        self._handler = _ConsoleHandler(self.console)
        for name in OWN_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        self.console.print(f"[dim]log lines of Ray, Serve, vLLM and the workers: {self.path}[/dim]")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._saved is None:
            return
        for name in OWN_LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        if exc_type is not None and exc_type is not KeyboardInterrupt:
            self.console.print(f"the libraries' and workers' log lines are in {self.path}")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._terminal.close()
        self._saved = None
