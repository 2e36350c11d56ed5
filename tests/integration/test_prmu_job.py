"""`tagpr prmu train` on Ray Train (2 CPU workers, DDP over gloo): the PRMU and its separately
trained user-blind baseline; then `tagpr prmu eval`."""

import json
from pathlib import Path

import pytest

from tagpr.jobs.prmu import eval_checkpoint
from tagpr.prmu.checkpoint import BLIND, load_meta

pytestmark = pytest.mark.integration


def test_job_trains_on_two_workers_and_beats_user_blind(prmu_job):
    cfg, result = prmu_job
    meta = load_meta(result.checkpoint)
    assert meta["version"] == result.version and meta["variant"] == "encoder"
    history = meta["metrics"]["train_loss"]
    assert len(history) == 25 and history[-1]["loss"] < history[0]["loss"]
    assert result.prmu["all"] >= result.user_blind["all"] + 0.15, result
    assert set(result.prmu) == set(result.user_blind) == {"all", "LaMP_1", "LaMP_2"}
    assert meta["metrics"]["dev_pairwise_accuracy"]["prmu"] == result.prmu
    assert meta["score_stats"]["std"] > 0 and not meta["user_blind"]
    blind = load_meta(Path(result.checkpoint) / BLIND)
    assert blind["user_blind"] and blind["num_users"] == 0 and len(blind["metrics"]["train_loss"]) == 25
    runs = list(Path(cfg.run.root).glob("*-prmu-*"))
    assert len(runs) == 1 and (runs[0] / "tagpr_config.yaml").exists()
    assert json.loads((runs[0] / "prmu_eval.json").read_text())["version"] == result.version


def test_eval_reproduces_the_job_numbers(prmu_job):
    cfg, result = prmu_job
    again = eval_checkpoint(cfg, result.checkpoint)
    assert again.prmu == pytest.approx(result.prmu) and again.user_blind == pytest.approx(result.user_blind)
