"""The learning benchmark: its summary and figure from fabricated per-seed results, and how a cut-off
run is resumed (no Ray)."""

import json

import pytest

from benchmarks.learning import _rewards, kept, main, plot, resume_mismatch, summarize, variants


def seed_entry(sft: float, rl: dict[str, float]) -> dict:
    curve = [{"step": s, "reward_mean": 0.5, "format": 1.0, "task": 0.4 + 0.01 * s, "clip_frac": 0.0} for s in (1, 2)]
    return {"sft": {"task_score": sft, "format_valid": 1.0},
            "rl": {n: {"task_score": v, "format_valid": 0.99} for n, v in rl.items()},
            "rewards": {n: curve for n in rl}}


def test_variants_give_every_run_the_same_learner_steps():
    runs = variants(8, 4)
    assert list(runs) == ["format_task", "guided_tags", "guided_tags_prmu", "tagpr"]
    assert {sum(s["steps"] for s in stages) for stages in runs.values()} == {12}
    assert [s["weights"] for s in runs["tagpr"]] == [{"format_task": 1.0, "tag": 0.2, "prmu": 0.3},
                                                      {"format_task": 1.0}]


def test_summary_is_the_mean_paired_difference_with_a_seed_interval(tmp_path):
    per_seed = {"0": seed_entry(0.40, {"tagpr": 0.46, "format_task": 0.40}),
                "1": seed_entry(0.38, {"tagpr": 0.43, "format_task": 0.37}),
                "2": seed_entry(0.42, {"tagpr": 0.48, "format_task": 0.43})}
    rows = summarize(per_seed, ["format_task", "tagpr"])
    assert rows["tagpr"]["differences"] == pytest.approx([0.06, 0.05, 0.06])
    assert rows["tagpr"]["mean_difference"] == pytest.approx(0.17 / 3)
    assert rows["tagpr"]["relative"] == pytest.approx((0.17 / 3) / 0.40)
    assert 0 < rows["tagpr"]["low"] < rows["tagpr"]["mean_difference"] < rows["tagpr"]["high"]
    assert rows["format_task"]["low"] < 0 < rows["format_task"]["high"]  # no difference: the interval spans 0
    result = {"details": {"rows": rows, "seeds": [0, 1, 2], "per_seed": per_seed,
                          "dev_questions_per_task": {"LaMP_1": 256, "LaMP_2": 256}}}
    plot(result, tmp_path / "learning.png")
    assert (tmp_path / "learning.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, says", [
    (["--seeds", "0"], "two or more different"),  # one seed: no interval over seeds to give
    (["--seeds", "1,1"], "two or more different"),
    (["--seeds", "0,x"], "integer seeds"),
    (["--steps", "0,4"], "at least one guided step"),
    (["--variants", "tagpr,grpo"], "unknown ['grpo']"),
])
def test_bad_arguments_stop_before_any_training(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_a_finished_part_is_kept_with_its_time_and_not_run_again(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"evaluation": {"task_score": 0.5}}

    first, second = {}, {}
    marker = tmp_path / "seed-0" / "sft_dev.json"
    assert kept(marker, work, first, "sft seed 0")["evaluation"] == {"task_score": 0.5}
    assert kept(marker, work, second, "sft seed 0")["evaluation"] == {"task_score": 0.5}
    assert len(calls) == 1 and second["sft seed 0"] == first["sft seed 0"] >= 0
    assert not list(marker.parent.glob("*.tmp"))  # written whole or not at all


def test_a_part_that_fails_leaves_no_marker(tmp_path):
    def work():
        raise RuntimeError("learner died")

    with pytest.raises(RuntimeError):
        kept(tmp_path / "dev_eval.json", work, {}, "tagpr seed 0")
    assert not (tmp_path / "dev_eval.json").exists()


def test_a_step_retrained_after_a_resume_counts_once_in_the_curve(tmp_path):
    rows = [{"prefix": "learner", "step": 1, "reward_mean": 0.1}, {"prefix": "learner", "step": 2, "reward_mean": 0.2},
            {"prefix": "rollout", "step": 2, "gen_frac": 0.5},
            {"prefix": "learner", "step": 2, "reward_mean": 0.3}, {"prefix": "learner", "step": 3, "reward_mean": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert [(c["step"], c["reward_mean"]) for c in _rewards(tmp_path)] == [(1, 0.1), (2, 0.3), (3, 0.4)]


def test_resume_needs_the_settings_the_run_started_with(tmp_path):
    settings = {"config": "configs/demo.yaml", "overrides": ["rl.lr=1e-4"], "steps": [32, 16]}
    assert "not a learning-benchmark run" in resume_mismatch(tmp_path, settings)
    (tmp_path / "bench.json").write_text(json.dumps(settings))
    assert resume_mismatch(tmp_path, settings) is None
    other = resume_mismatch(tmp_path, {**settings, "overrides": []})
    assert "ran with overrides ['rl.lr=1e-4'], not []" in other


def test_resume_of_a_folder_that_is_no_bench_run_stops_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--resume", str(tmp_path)])
    assert stop.value.code == 2 and "no bench.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_prmu_agreement_counts_pairs_whose_task_scores_and_prmu_rewards_both_differ():
    from benchmarks.prmu_agreement import agreement

    assert agreement([0.0, 1.0, 0.5], [0.1, 0.9, 0.5]) == (3, 3)
    assert agreement([0.0, 1.0, 0.5], [0.9, 0.1, 0.5]) == (0, 3)
    assert agreement([0.0, 0.0, 1.0], [0.2, 0.9, 0.9]) == (1, 1)  # a tie on either side is not compared


def test_input_share_counts_the_answers_own_words_found_in_the_input():
    from benchmarks.input_copy import input_share

    profile = ['{"title": "Breaking news: markets fall"}']
    assert input_share("Breaking news: wage rise approved", "The council approved a wage rise", profile) == 1.0
    assert input_share("Breaking news: stadium plan", "The council approved a wage rise", profile) == 0.0
    assert input_share("Breaking news: wage plan", "a wage rise", profile) == 0.5
    assert input_share("Breaking news", "anything", profile) == 0.0  # nothing of its own


def test_styled_needs_the_users_prefix_and_suffix():
    from benchmarks.input_copy import styled

    user = {"prefix": "Quick ask:", "suffix": "by Friday please"}
    assert styled("Quick ask: Sign the hiring plan by Friday please", user) == 1.0
    assert styled("Urgent: Sign the hiring plan by Friday please", user) == 0.0
    assert styled("Quick ask: Sign the hiring plan thanks in advance", user) == 0.0
    assert styled("anything", None) is None  # no latent style outside the synthetic data
