import json

import pytest

from tagpr.config import RESOLVED_NAME, load_config
from tagpr.errors import TagPRError
from tagpr.pipeline import run_pipeline


def small_cfg(tmp_path):
    return load_config(None, [
        f"run.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}", "data.tasks=[LaMP_3, LaMP_7]",
        "data.synthetic.users={train: 8, dev: 4}",
    ])


def test_data_step_writes_run_dir_and_reuses_data(tmp_path):
    cfg = small_cfg(tmp_path)
    logs = []
    ctx = run_pipeline(cfg, ["data"], log=logs.append)
    assert (ctx.run_dir / RESOLVED_NAME).exists()
    summary = json.loads((ctx.run_dir / "summary.json").read_text())
    assert summary["steps"]["data"]["written"] == ["LaMP_3", "LaMP_7"]
    assert set(json.loads((ctx.run_dir / "baselines.json").read_text())) == {"LaMP_3", "LaMP_7"}
    again = run_pipeline(cfg, ["data"], log=logs.append)
    assert again.results["data"]["written"] == [] and "reusing" in logs[-1]


def test_unknown_step_fails_before_any_work(tmp_path):
    cfg = small_cfg(tmp_path)
    with pytest.raises(TagPRError, match="unknown pipeline step 'sft2'"):
        run_pipeline(cfg, ["data", "sft2"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
