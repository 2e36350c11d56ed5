"""The jobs' result records write the JSON files (``rl_report.json``, ``sft_eval.json``, chains'
``stats.json``) with the keys, in the order, those files have always had."""

from tagpr.rl.result import RLResult, RLStage


def test_the_rl_report_holds_the_checkpoint_state_per_stage_and_only_the_roles_that_ran():
    state = {"stage_index": 1, "step": 5, "stage_step": 2, "plateau": {"best": 0.5, "since": 1},
             "stage": "exploratory", "lora": False, "base": "sft"}
    guided = RLStage(**{**state, "stage_index": 0, "step": 3, "stage": "guided"}, seconds=2.0, policy="p/guided")
    split = {"gen_frac": 0.8, "reward_frac": 0.05, "sync_frac": 0.01, "blocked_frac": 0.1}
    report = RLResult(run_dir="run", stages={"guided": guided, "exploratory": RLStage(
        **state, seconds=1.0, policy="p/exploratory", rollout=split)},
                      evaluations={"start": {"task_score": 0.4}}, buffer={"version": 5}, pool_events=[],
                      seconds=9.0)
    written = report.to_json()
    assert list(written) == ["run_dir", "stages", "evaluations", "buffer", "pool_events", "seconds"]
    assert written["stages"]["exploratory"] == {**state, "seconds": 1.0, "policy": "p/exploratory", "rollout": split}
    assert list(written["stages"]["exploratory"]) == [*state, "seconds", "policy", "rollout"]
    assert written["stages"]["guided"]["rollout"] is None  # the pool could not be asked (a worker being replaced)
    assert report.policy == "p/exploratory"  # the last stage's


def test_sft_leaves_out_the_scores_it_was_not_asked_for():
    from tagpr.jobs.sft import SFTResult

    result = SFTResult(policy_in="base", policy="out", history={"epoch": 1}, after={"task_score": 0.5}, seconds=3.0)
    assert list(result.to_json()) == ["policy_in", "policy", "history", "after", "seconds"]


def test_chains_stats_are_keyed_by_split():
    from tagpr.jobs.chains import ChainsResult, ChainsSplit

    split = ChainsSplit(chains=2, kept_this_run=2, dropped_this_run={"duplicate": 1}, per_task={"LaMP_2": 2},
                        tag_distribution={"examine_examples": 2}, seconds=0.5)
    assert ChainsResult({"train": split}).to_json() == {"train": {
        "chains": 2, "kept_this_run": 2, "dropped_this_run": {"duplicate": 1}, "per_task": {"LaMP_2": 2},
        "tag_distribution": {"examine_examples": 2}, "seconds": 0.5}}


def test_a_required_field_that_is_none_is_written_as_null():
    from tagpr.jobs.pipeline import ReportResult

    no_headline = ReportResult(report="report.md", headline=None, summary={})
    assert no_headline.to_json() == {"report": "report.md", "headline": None, "summary": {}}
