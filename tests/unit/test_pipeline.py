import json

import pytest

from tagpr.config import RESOLVED_NAME, load_config
from tagpr.errors import TagPRError
from tagpr.pipeline import run_pipeline, with_policy


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


def test_listener_sees_each_step_start_and_finish(tmp_path):
    events = []

    class Listener:
        def start_step(self, name):
            events.append(("start", name))

        def finish_step(self, name):
            events.append(("finish", name))

    run_pipeline(small_cfg(tmp_path), ["data", "data"], log=lambda m: None, listener=Listener())
    assert events == [("start", "data"), ("finish", "data")] * 2


def test_with_policy_points_later_steps_at_an_earlier_output(tmp_path):
    cfg = small_cfg(tmp_path)
    assert with_policy(cfg, None) is cfg
    moved = with_policy(cfg, str(tmp_path / "base"))
    assert moved.model.policy == str((tmp_path / "base").resolve()) and cfg.model.policy != moved.model.policy


def test_run_progress_draws_steps_units_and_log_lines():
    import io

    from rich.console import Console

    from tagpr.progress import RunProgress

    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    with RunProgress(["data", "sft"], console) as progress:
        progress.start_step("data")
        progress.finish_step("data")
        progress.start_step("sft")
        progress.update("sft steps", 3, 10)
        progress.update("sft steps", 10, 10)
        progress.update("dev tasks scored (sft after)", 2, 7)
        descriptions = [t.description for t in progress._progress.tasks]
        progress.log("a log line")
        progress.finish_step("sft")
        assert [t.completed for t in progress._progress.tasks] == [2]
    assert descriptions == ["step 2/2: sft", "  dev tasks scored (sft after)"]
    text = out.getvalue()
    assert "data done in" in text and "sft done in" in text and "a log line" in text
