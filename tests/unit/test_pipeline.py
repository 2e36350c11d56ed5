import json
from pathlib import Path

import pytest

from tagpr.config import RESOLVED_NAME, load_config
from tagpr.errors import TagPRError
from tagpr.jobs.pipeline import run_pipeline, step_report, with_policy


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
    assert again.results["data"].written == [] and "reusing" in logs[-1]


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


def fake_evaluation(ids, level, sampled=0.5):
    """An evaluation as evaluate_policy returns it: every question of ``ids`` (task -> ids) scores ``level``."""
    tasks = {}
    for task, qs in ids.items():
        metric = {"accuracy": level} if task == "LaMP_2" else {"mae": 4 * (1 - level)}
        tasks[task] = {"n": len(qs), "format": 1.0, "tag": 0.5, **metric, "per_question": {q: level for q in qs}}
    return {"task_score": level, "format_valid": 1.0, "sampled_format_valid": sampled, "tag_score": 0.5,
            "tasks": tasks}


@pytest.fixture()
def report_ctx(tmp_path):
    from tagpr.jobs.pipeline import RunContext
    from tagpr.lamp.synthetic import write_synthetic

    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "data.tasks=[LaMP_2, LaMP_3]",
                             "data.synthetic.users={train: 4, dev: 8}", "run.report_eval_limit=8"])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return RunContext(cfg, run_dir, log=lambda m: None)


def test_the_reference_step_is_registered():
    from tagpr.jobs.pipeline import STEPS

    assert STEPS.get("reference").__name__ == "step_reference"


def sft_result(policy, before=None, after=None):
    from tagpr.jobs.sft import SFTResult

    return SFTResult(policy_in="base", before=before, policy=policy, history={}, after=after, seconds=0.0)


def test_the_report_reuses_evaluations_of_the_same_questions_and_heads_with_the_reference(report_ctx, monkeypatch):
    import tagpr.evaluation
    from tagpr.evaluation import question_ids
    from tagpr.rl.result import RLResult, RLStage

    def no_generation(*args, **kwargs):
        raise AssertionError("the report scored a policy again")

    monkeypatch.setattr(tagpr.evaluation, "evaluate_policy", no_generation)
    ctx = report_ctx
    lines = []
    ctx.log = lines.append
    ids = question_ids(ctx.cfg, 8)
    assert all(len(q) == 8 for q in ids.values())
    rl_eval = fake_evaluation(ids, 0.6)
    rl_eval["tasks"]["LaMP_3"].update(top_answer="3", top_answer_share=1.0)
    ctx.results = {"sft": sft_result("sft", fake_evaluation(ids, 0.0), fake_evaluation(ids, 0.5)),
                   "reference": sft_result("ref", after=fake_evaluation(ids, 0.4)),
                   "rl": RLResult(run_dir=str(ctx.run_dir / "rl"), seconds=0.0,
                                  stages={"exploratory": RLStage(stage_index=1, step=12, stage_step=4, plateau={},
                                                                 stage="exploratory", lora=False, base="sft",
                                                                 seconds=0.0, policy="rl")},
                                  evaluations={"start": fake_evaluation(ids, 0.5),
                                               "exploratory": rl_eval})}
    out = step_report(ctx)
    assert lines[-2] == "report: one answer for every question: rl LaMP_3 ('3')"
    assert lines[-1].startswith(f"report: ask the trained policy:\ntagpr serve policy --config "
                                f"{(ctx.run_dir / 'tagpr_config.yaml').resolve()} --policy ")
    assert f"--policy {Path('rl').resolve()} " in lines[-1] and "/v1/chat/completions" in lines[-1]  # RL's policy
    assert out.headline["label"] == "RL vs direct-answer reference"
    assert out.headline["average"] == pytest.approx((0.5 + 0.8 / 2.4) / 2)  # accuracy 0.4 -> 0.6, MAE 2.4 -> 1.6
    report = json.loads((ctx.run_dir / "report.json").read_text())
    assert report["phases"] == ["base", "reference", "sft", "rl"]
    assert report["comparisons"]["rl_vs_reference"]["task_score"]["estimate"] == pytest.approx(0.2)
    md = (ctx.run_dir / "report.md").read_text()
    assert "8 dev questions per task, drawn across all users (seed 0)" in md and "| LaMP_2 | 8 | +0.100" in md
    assert (ctx.run_dir / "dev_metrics.png").stat().st_size > 0
    assert md.rstrip().endswith("```") and "## Ask the trained policy" in md


def test_the_report_scores_again_what_was_scored_on_other_questions(report_ctx, monkeypatch):
    import tagpr.evaluation
    from tagpr.evaluation import question_ids
    from tagpr.jobs.pipeline import reusable

    ctx = report_ctx
    ids, other = question_ids(ctx.cfg, 8), question_ids(ctx.cfg, 4)
    scored = []

    def evaluate(policy, cfg, limit, on_task):
        scored.append((Path(policy).name, limit))
        return fake_evaluation(ids, 0.3)

    monkeypatch.setattr(tagpr.evaluation, "evaluate_policy", evaluate)
    unsampled = fake_evaluation(ids, 0.4)
    del unsampled["sampled_format_valid"]
    assert reusable(fake_evaluation(ids, 0.4), ids) and not reusable(unsampled, ids)
    assert not reusable(fake_evaluation(other, 0.4), ids) and not reusable(None, ids)
    ctx.results = {"sft": sft_result("sft", fake_evaluation(ids, 0.0), fake_evaluation(other, 0.5)),
                   "reference": sft_result("ref", after=unsampled)}
    out = step_report(ctx)
    assert scored == [("ref", 8), ("sft", 8)]
    assert out.headline is None and "add the `reference` step" not in (ctx.run_dir / "report.md").read_text()


def test_reference_records_are_sfts_examples_with_only_the_gold_answer(report_ctx, tmp_path):
    from tagpr.jobs.sft import reference_records

    cfg = report_ctx.cfg.model_copy(update={"tags": report_ctx.cfg.tags.model_copy(update={"answer": "final"}),
                                            "chains": report_ctx.cfg.chains.model_copy(update={"out": str(tmp_path)})})
    with pytest.raises(TagPRError, match="chains.out.*run the `chains` step"):
        reference_records(cfg, "train")
    chain = {"id": "q1", "task": "LaMP_3", "input": "rate it", "gold": "4", "user_id": "u1",
             "profile": [{"text": "fine", "score": "4"}],
             "response": "<examine_examples>x</examine_examples><final>3</final>"}
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(c) for c in (chain, chain, {**chain, "id": "q2"})))
    records = reference_records(cfg, "train")
    assert len(records) == 3  # as many examples as SFT trains on, duplicates included
    assert records[0] == {"task": "LaMP_3", "input": "rate it", "profile": chain["profile"],
                          "response": "<final>4</final>"}  # the gold, not the chain's answer, and no reasoning


def test_rl_starts_from_sfts_scores_when_they_cover_its_questions(report_ctx, monkeypatch):
    """SFT's after-evaluation is the RL start's, on the same questions: RL does not score it again."""
    import tagpr.jobs.rl
    from tagpr.evaluation import question_ids
    from tagpr.jobs.pipeline import step_rl
    from tagpr.rl.result import RLResult, RLStage

    given = []

    def train(cfg, log, run_dir, start_evaluation=None):
        given.append(start_evaluation)
        stage = RLStage(stage_index=0, step=2, stage_step=2, plateau={"best": 0.5, "since": 0}, stage="guided",
                        lora=False, base="sft", seconds=1.0, policy="rl")
        return RLResult(run_dir=str(run_dir), stages={"guided": stage}, evaluations={}, seconds=0.0)

    monkeypatch.setattr(tagpr.jobs.rl, "train", train)
    ctx = report_ctx
    ctx.cfg = ctx.cfg.model_copy(update={"rl": ctx.cfg.rl.model_copy(update={"eval_limit": 8})})
    after = fake_evaluation(question_ids(ctx.cfg, 8), 0.5)
    ctx.results = {"sft": sft_result("sft", after=after)}
    assert step_rl(ctx).policy == "rl"
    ctx.results = {"sft": sft_result("sft", after=fake_evaluation(question_ids(ctx.cfg, 4), 0.5))}
    step_rl(ctx)
    assert given == [after, None]
