"""`tagpr run` in a pseudo-terminal, read back through a terminal emulator: the bars render, Ray's and
the workers' lines stay out of the console (they are in <run dir>/logs/console.log), and the screen
stays short."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import time

import pytest

from actors.cluster import entry_point

pytestmark = pytest.mark.integration

COLUMNS, ROWS = 120, 40
MAX_LINES = 30  # the bars, a result line per step, the baselines table and the PRMU scores
RAY_NOISE = ("PlacementGroupCleaner", "(RayTrainWorker", "(TrainController", "INFO worker.py")


def run_in_terminal(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, list[str]]:
    """Run ``cmd`` on a pseudo-terminal; its exit code and the lines a terminal would show
    (scrollback included), blank ones dropped."""
    import pyte

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=5000)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        stream.feed(data)
        if time.monotonic() > deadline:
            proc.kill()
            break
    os.close(master)
    code = proc.wait(timeout=30)
    history = ["".join(line[x].data for x in range(COLUMNS)) for line in screen.history.top]
    lines = [line.rstrip() for line in (*history, *screen.display)]
    return code, [line for line in lines if line.strip()]


def test_run_console_is_one_readable_screen(ray_cluster, tmp_path):
    import ray

    overrides = {
        "run.root": tmp_path / "runs", "data.root": tmp_path / "data", "model.policy": tmp_path / "policy",
        "data.tasks": "[LaMP_1, LaMP_2]", "data.synthetic.users": "{train: 24, dev: 8}",
        "data.synthetic.questions_per_user": 2, "prmu.num_workers": 1, "prmu.epochs": 2,
        "prmu.hidden_size": 32, "cluster.address": ray.get_runtime_context().gcs_address,
    }
    cmd = [entry_point("tagpr"), "run", "--steps", "data,model,prmu"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("TAGPR_LOG_LEVEL", None)
    code, lines = run_in_terminal(cmd, env, timeout=400)
    screen = "\n".join(lines)
    assert code == 0, screen
    assert "step 3/3: prmu" in screen and "3/3" in screen  # the pipeline bar, drawn
    assert "prmu done in" in screen  # a result line per step
    assert not [n for n in RAY_NOISE if n in screen], screen
    assert len(lines) <= MAX_LINES, screen
    assert len(set(lines)) == len(lines), screen  # no line twice
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = (run_dir / "logs" / "console.log").read_text()
    assert str(run_dir / "logs" / "console.log") in screen.replace("\n", "")
    assert "(RayTrainWorker" in log or "(TrainController" in log  # the workers' lines went to the file
    assert "Failed to query Ray Train Controller actor state" not in log  # the cleaner's once-a-second line
    worker = [line for line in log.splitlines() if "(RayTrainWorker" in line]
    assert not [a for a, b in zip(worker, worker[1:]) if a == b], log  # Ray Train's print patch doubled them
