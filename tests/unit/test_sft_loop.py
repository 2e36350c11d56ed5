"""The SFT loop on the tiny policy in one process: loss goes down, dev loss is per assistant token."""

import json

from actors.train_strategy import DDPStrategy
from tagpr.models import build_tiny_policy, load_policy
from tagpr.sft.data import tokenize_chains
from tagpr.sft.train import eval_loss, train_epochs

CHAIN = {"task": "LaMP_2", "input": "Which tag fits: description: a starship crew. candidates: sci-fi, comedy",
         "profile": json.dumps([{"tag": "sci-fi", "description": "robots"}]),
         "response": "<examine_examples>sci-fi before.</examine_examples><answer>sci-fi</answer>"}


def test_loop_learns_and_reports_progress(cfg, tagset, tmp_path):
    model, tok = load_policy(cfg.model, str(build_tiny_policy(cfg.model, cfg.tags, tmp_path / "p")))
    data = tokenize_chains([CHAIN] * 8, tok, tagset, 4, 256)
    sft = cfg.sft.model_copy(update={"epochs": 3, "batch_size": 4, "lr": 3e-3})
    stepper = DDPStrategy(model, sft, sft.lr, 0.0, sft.batch_size, world=1)
    before = eval_loss(stepper, data, 4, tok.pad_token_id)
    epochs, lines, steps = [], [], []
    history = train_epochs(stepper, data, data, sft, tok.pad_token_id, on_epoch=lambda e, s: epochs.append(e),
                           log=lines.append, on_step=lambda done, total: steps.append((done, total)))
    assert epochs == [1, 2, 3] and [h["epoch"] for h in history] == [1, 2, 3]
    assert steps == [(i, 6) for i in range(1, 7)]  # 2 steps per epoch, counted across epochs
    assert history[-1]["dev_loss"] < before / 2
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert any("step 2/2" in line for line in lines)
    resumed = train_epochs(stepper, data, None, sft.model_copy(update={"epochs": 4}), tok.pad_token_id, start_epoch=3)
    assert [h["epoch"] for h in resumed] == [4] and "dev_loss" not in resumed[0]


def test_lr_schedule(cfg):
    from tagpr.schedule import lr_at

    s = cfg.sft.model_copy(update={"lr": 1.0, "warmup_steps": 4, "lr_schedule": "cosine"})
    assert [lr_at(i, 104, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 104, s) == 1.0 and abs(lr_at(54, 104, s) - 0.5) < 1e-9 and lr_at(104, 104, s) == 0.0
    flat = s.model_copy(update={"lr_schedule": "constant", "warmup_steps": 0})
    assert lr_at(0, 10, flat) == lr_at(9, 10, flat) == 1.0

