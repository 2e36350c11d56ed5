"""A process killed (SIGKILL) while it writes checkpoints leaves the newest complete one loadable.

A writer process saves learner-style checkpoints of the tiny policy in a loop (model, tokenizer,
optimizer state, trainer state, RNG) and publishes each with ``publish_checkpoint``; the test
kills it at random moments, then loads what ``latest_checkpoint`` picks: weights, optimizer and
state. Each round resumes from the checkpoint the previous one left, as a restarted learner does.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6


def write_forever(policy: str, run_dir: str) -> None:
    """The writer: resume from the newest checkpoint, then write one per step until killed."""
    import torch
    from transformers import AutoTokenizer

    from actors.checkpoints import RNG, load_trainable, publish_checkpoint, read_state, save_checkpoint
    from actors.learner import CHECKPOINTS, latest_checkpoint
    from actors.train_strategy import DDPStrategy
    from tagpr.config import LearnerConfig, LoraConfig

    run = Path(run_dir)
    start = latest_checkpoint(run)
    step = read_state(start)["step"] if start else 0
    model = load_trainable(policy, LoraConfig(), start)
    strategy = DDPStrategy(model, LearnerConfig(), 1e-4, 0.0, 1, world=1)
    if start:
        strategy.load_state(start)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    ids = torch.tensor([tokenizer("a short line to learn")["input_ids"]])
    print("ready", flush=True)
    while True:
        step += 1
        strategy.step(strategy.forward(input_ids=ids, labels=ids).loss)
        final = run / CHECKPOINTS / f"step-{step:06d}"
        tmp = final.with_name(f".tmp-{final.name}")
        tmp.mkdir(parents=True, exist_ok=True)
        save_checkpoint(strategy, tokenizer, tmp, False, policy, {"step": step}, 0)
        torch.save(torch.get_rng_state(), tmp / RNG)
        publish_checkpoint(tmp, final, keep=2)


def test_a_kill_during_checkpoint_writes_leaves_the_newest_complete_one_loadable(tiny_policy, tmp_path):
    from actors.checkpoints import load_trainable, read_state
    from actors.learner import latest_checkpoint
    from actors.train_strategy import DDPStrategy
    from tagpr.config import LearnerConfig, LoraConfig

    rng = random.Random(0)
    steps = []
    code = f"from tests.reliability.test_checkpoint_kill import write_forever; write_forever({str(tiny_policy)!r}, " \
           f"{str(tmp_path)!r})"
    for _ in range(ROUNDS):
        before = latest_checkpoint(tmp_path)
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while latest_checkpoint(tmp_path) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere inside a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        newest = latest_checkpoint(tmp_path)
        assert newest is not None and newest != before
        state = read_state(newest)
        model = load_trainable(str(tiny_policy), LoraConfig(), newest)
        DDPStrategy(model, LearnerConfig(), 1e-4, 0.0, 1, world=1).load_state(newest)
        steps.append(state["step"])
    assert steps == sorted(steps) and len(set(steps)) == ROUNDS  # each round resumed where the last one stopped
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert 1 <= len(kept) <= 3  # keep=2, plus at most the one being replaced when the kill came
