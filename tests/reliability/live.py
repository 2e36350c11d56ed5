"""Faults injected into live RL runs: the learner's step log (every attempt of every step, with
the prompt ids it trained on), a fault fired once the run reaches a step, and the processes of a
role found the way an operator finds them (Ray titles each actor process ``ray::<Class>``)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from actors.cluster import pids_matching


def learner_log(run_dir: Path) -> list[dict]:
    """Every learner step logged, in order; a step retried after a crash appears once per attempt."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["prefix"] == "learner"]


def assert_each_prompt_trained_once(run_dir: Path, steps: int, prompts_per_step: int) -> list[dict]:
    """The run's steps, as finally kept, are 1..steps and train each prompt exactly once; a step
    logged again after a rewind trained on the same prompts as before (the buffer was rewound to the
    checkpoint's snapshot, not refilled). Returns the log."""
    log = learner_log(run_dir)
    final = {m["step"]: m["prompts"] for m in log}
    assert sorted(final) == list(range(1, steps + 1)), [m["step"] for m in log]
    keys = [k for prompts in final.values() for k in prompts]
    assert len(keys) == len(set(keys)) == steps * prompts_per_step, sorted(keys)
    for m in log:
        assert m["prompts"] == final[m["step"]], f"step {m['step']} retried on other prompts"
    return log


def run_dir_under(root: Path) -> Path | None:
    found = sorted(root.glob("*/metrics.jsonl"))
    return found[0].parent if found else None


class AtStep(threading.Thread):
    """Calls ``fault(run_dir)`` once the single run under ``root`` has logged ``step`` learner steps;
    :meth:`result` returns what it returned, or raises what it raised (or a timeout)."""

    def __init__(self, root: Path, step: int, fault: Callable[[Path], Any], timeout_s: float = 900):
        super().__init__(daemon=True, name=f"fault-at-step-{step}")
        self.root, self.step, self.fault, self.timeout_s = root, step, fault, timeout_s
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout_s
            while not ((run := run_dir_under(self.root)) and len(learner_log(run)) >= self.step):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the run never logged step {self.step}")
                time.sleep(0.05)
            self._value = self.fault(run)
        except BaseException as exc:  # handed to the test thread by result()
            self._error = exc

    def result(self) -> Any:
        self.join(timeout=120)
        if self._error is not None:
            raise self._error
        assert not self.is_alive(), "the fault never fired"
        return self._value


def pids_titled(title: str) -> list[int]:
    """Processes whose command line starts with ``title`` (``ray::RolloutWorker``...)."""
    return pids_matching(lambda cmdline: cmdline.startswith(title.encode()))


def kill_one(title: str) -> int:
    """SIGKILL the one process titled ``title``: no cleanup runs, as when a node loses it."""
    (pid,) = pids_titled(title)
    os.kill(pid, signal.SIGKILL)
    return pid
