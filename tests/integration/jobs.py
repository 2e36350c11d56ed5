"""`ray job` against a head of the tests' own, started with `ray start --head` and token
authentication on (apart from the test session's cluster)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from actors.cluster import LocalHead, entry_point

ROOT = Path(__file__).resolve().parents[2]
TOKEN = secrets.token_hex(16)


@contextmanager
def token_head(num_cpus: int = 4) -> Iterator[LocalHead]:
    h = LocalHead(num_cpus=num_cpus, dashboard=True)
    h.start(env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
    try:
        yield h
    finally:
        h.stop()


def ray_job(head: LocalHead, command: str, *args: str, token: str | None = TOKEN, home: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``ray job <command> --address <head> <args>`` as a user runs it, with the token in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "token"
    if token:
        env["RAY_AUTH_TOKEN"] = token
    if home:
        env["HOME"] = str(home)
    cmd = [entry_point("ray"), "job", command, "--address", head.dashboard_url, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def submit(head: LocalHead, entrypoint: list[str], *options: str, token: str | None = TOKEN,
           home: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``ray job submit [options] --working-dir <repo> -- <entrypoint>``; waits for the job unless
    ``--no-wait`` is among ``options``."""
    deadline = time.monotonic() + 60
    while True:  # a fresh head's job agent registers a few seconds after `ray start` returns
        run = ray_job(head, "submit", *options, "--working-dir", str(ROOT), "--", *entrypoint, token=token,
                      home=home, timeout=timeout)
        if "No available agent" not in run.stderr or time.monotonic() > deadline:
            return run
        time.sleep(2)
