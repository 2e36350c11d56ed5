"""The run report: base, direct-answer reference, SFT and RL rows; the headline (RL's average relative
improvement over the reference) with MAE counted as lower-is-better; paired-bootstrap intervals of
RL against SFT and the reference with the sample size beside them; the dev plot on one 0-1 scale."""

import numpy as np
import pytest

from tagpr.report import (
    HEADLINE,
    build_report,
    plot_dev,
    plot_report,
    prmu_distribution,
    prmu_note,
    relative_improvement,
    render_markdown,
    serving_commands,
    serving_section,
)

N = 40


def evaluation(lamp2: list[float], lamp3: list[float], format_valid=1.0, sampled=0.5, per_question=True):
    """An evaluation as evaluate_policy returns it, from per-question primary scores (LaMP_3's are
    1 - |error| / 4, so its MAE is 4 * (1 - their mean))."""
    tasks = {}
    for name, values in (("LaMP_2", lamp2), ("LaMP_3", lamp3)):
        mean = sum(values) / len(values)
        metrics = {"accuracy": mean, "f1": 0.1} if name == "LaMP_2" else {"mae": 4 * (1 - mean), "rmse": 1.0}
        tasks[name] = {"n": len(values), "format": format_valid, "tag": 0.9, **metrics,
                       **({"per_question": {f"{name}-q{i}": v for i, v in enumerate(values)}} if per_question else {})}
    task_score = (tasks["LaMP_2"]["accuracy"] + 1 - tasks["LaMP_3"]["mae"] / 4) / 2
    return {"task_score": task_score, "format_valid": format_valid, "sampled_format_valid": sampled,
            "tag_score": 0.9, "tasks": tasks}


def constant(lamp2: float, lamp3: float, **kw):
    return evaluation([lamp2] * N, [lamp3] * N, **kw)


def test_relative_improvement_flips_for_lower_is_better():
    assert relative_improvement(0.6, 0.5, True) == pytest.approx(0.2)
    assert relative_improvement(0.8, 1.0, False) == pytest.approx(0.2)  # MAE down 20% is a gain
    assert relative_improvement(0.3, 0.0, True) is None


def four_phases():
    # LaMP_2 accuracy: reference 0.2 -> RL 0.4 (+100%); LaMP_3 MAE: reference 1.0 -> RL 0.5 (+50%)
    return {"base": constant(0.0, 0.5, format_valid=0.0, sampled=0.0), "reference": constant(0.2, 0.75),
            "sft": constant(0.3, 0.8), "rl": constant(0.4, 0.875, sampled=0.25)}


def test_rows_and_the_headline_are_against_the_reference():
    report = build_report(four_phases())
    assert report["phases"] == ["base", "reference", "sft", "rl"]
    lamp2, lamp3 = report["tasks"]
    assert (lamp2["metric"], lamp2["n"]) == ("accuracy", N)
    assert (lamp2["values"]["base"], lamp2["values"]["rl"]) == pytest.approx((0.0, 0.4))
    assert lamp3["values"]["reference"] == pytest.approx(1.0) and lamp3["scores"]["rl"] == pytest.approx(0.875)
    assert lamp2["relative"]["rl"] == pytest.approx(1.0) and lamp3["relative"]["rl"] == pytest.approx(0.5)
    assert set(lamp2["relative"]) == {"sft", "rl"}  # the untrained base is a row, not a denominator
    head = report["headline"]
    assert (head["label"], head["tasks"], head["of"]) == (HEADLINE, 2, 2)
    assert head["average"] == pytest.approx(0.75)
    assert report["relative"]["sft"]["average"] == pytest.approx((0.5 + 0.2) / 2)
    assert report["summary"]["rl"]["sampled_format_valid"] == 0.25

    md = render_markdown(report, "run", notes=["a note"], plots=["dev_metrics.png"])
    assert "**RL vs direct-answer reference: average relative improvement +75.0%** over 2 of 2 tasks" in md
    assert f"| LaMP_3 | mae (lower is better) | {N} | 2.000 | 1.000 | 0.800 | 0.500 | +20.0% | +50.0% |" in md
    assert "| **average relative improvement over the reference** | | | | | | | **+35.0%** (2 of 2 tasks) | " \
           "**+75.0%** (2 of 2 tasks) |" in md
    assert "| format valid (sampled) | 0.000 | 0.500 | 0.500 | 0.250 |" in md
    assert "| format valid (greedy) | 0.000 | 1.000 | 1.000 | 1.000 |" in md
    assert "undefined" not in md and "![dev_metrics](dev_metrics.png)" in md and "a note" in md


def test_intervals_per_task_and_for_the_task_score_with_the_sample_size():
    rng = np.random.default_rng(0)
    sft2, sft3 = list(rng.random(N)), list(rng.random(N))
    evaluations = {"reference": evaluation(list(rng.random(N)), list(rng.random(N))),
                   "sft": evaluation(sft2, sft3),
                   "rl": evaluation([v + 0.125 for v in sft2], [v + 0.25 for v in sft3])}  # a constant shift over SFT
    report = build_report(evaluations, resamples=500, seed=1)
    vs_sft, vs_ref = report["comparisons"]["rl_vs_sft"], report["comparisons"]["rl_vs_reference"]
    assert (vs_sft["policy"], vs_sft["against"]) == ("rl", "sft")
    for task, shift in (("LaMP_2", 0.125), ("LaMP_3", 0.25)):
        i = vs_sft["tasks"][task]
        assert (i["estimate"], i["low"], i["high"], i["n"]) == pytest.approx((shift, shift, shift, N))
    assert vs_sft["task_score"]["estimate"] == pytest.approx(0.1875)
    assert vs_sft["task_score"]["low"] == pytest.approx(0.1875) and vs_sft["task_score"]["n"] == N
    noisy = vs_ref["tasks"]["LaMP_2"]
    assert noisy["low"] < noisy["estimate"] < noisy["high"]
    assert report["bootstrap"] == {"resamples": 500, "seed": 1, "level": 0.95}

    md = render_markdown(report, "run")
    assert "| task | n | rl - sft | rl - reference |" in md
    assert f"| LaMP_2 | {N} | +0.125 [+0.125, +0.125] | " in md
    assert f"| **dev task score** | {N} per task | **+0.188 [+0.188, +0.188]** |" in md
    assert "95% paired-bootstrap interval], 500 resamples" in md


def test_policies_that_give_one_answer_to_a_task_are_named():
    evals = four_phases()
    evals["sft"]["tasks"]["LaMP_3"].update(top_answer="5", top_answer_share=1.0)
    evals["rl"]["tasks"]["LaMP_3"].update(top_answer="3", top_answer_share=0.95)
    evals["rl"]["tasks"]["LaMP_2"].update(top_answer="comedy", top_answer_share=0.85)  # under the bar
    evals["base"]["tasks"]["LaMP_2"].update(top_answer="", top_answer_share=1.0)  # no answer is not one answer
    report = build_report(evals)
    assert [(o["policy"], o["task"], o["answer"]) for o in report["one_answer"]] == [("sft", "LaMP_3", "5"),
                                                                                      ("rl", "LaMP_3", "3")]
    md = render_markdown(report, "run")
    assert "## One answer for every question" in md and f"| rl | LaMP_3 | `3` | 0.95 of {N} |" in md
    assert "One answer" not in render_markdown(build_report(four_phases()), "run")


def test_without_a_reference_there_is_no_headline_and_the_report_says_why():
    report = build_report({"base": constant(0.1, 0.5), "sft": constant(0.2, 0.6), "rl": constant(0.3, 0.7)})
    assert report["headline"] is None and report["relative"] == {}
    assert list(report["comparisons"]) == ["rl_vs_sft"]
    md = render_markdown(report, "run")
    assert "No headline figure" in md and "add the `reference` step" in md and "vs reference" not in md


def test_tasks_where_the_reference_scores_zero_are_left_out_of_the_average_and_said_so():
    report = build_report({"reference": constant(0.0, 0.75), "rl": constant(0.5, 0.875)})
    assert report["tasks"][0]["relative"]["rl"] is None
    assert (report["headline"]["average"], report["headline"]["tasks"]) == (pytest.approx(0.5), 1)
    md = render_markdown(report, "run")
    assert "over 1 of 2 tasks" in md and "undefined where the reference scores 0" in md and "| n/a |" in md


def test_evaluations_without_per_question_scores_get_no_intervals():
    report = build_report({"reference": constant(0.2, 0.75, per_question=False), "rl": constant(0.4, 0.8)})
    assert report["comparisons"] == {} and report["headline"]["average"] is not None
    assert "Paired differences" not in render_markdown(report, "run")


def test_policies_scored_on_different_questions_are_refused():
    a, b = constant(0.2, 0.75), constant(0.4, 0.8)
    b["tasks"]["LaMP_2"]["per_question"] = {f"other-{i}": 0.4 for i in range(N)}
    with pytest.raises(ValueError, match="same question ids"):
        build_report({"reference": a, "rl": b})
    with pytest.raises(ValueError, match="tasks"):
        build_report({"reference": a, "rl": {**b, "tasks": {"LaMP_2": b["tasks"]["LaMP_2"]}}})


def test_the_dev_plot_renders_every_phase_on_one_scale(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    evaluations = {p: evaluation(list(rng.random(N) * k), list(0.5 + rng.random(N) * k / 2))
                   for p, k in (("base", 0.1), ("reference", 0.5), ("sft", 0.6), ("rl", 0.8))}
    path = tmp_path / "dev_metrics.png"
    plot_dev(build_report(evaluations, resamples=200), path)
    width, height = Image.open(path).size
    assert width > 1000 and height > 700


def test_prmu_score_distribution_is_summarised_and_plotted(tmp_path):
    learner = [{"step": i, "time": float(i), "reward/prmu": 0.5,
                "prmu_scores": {"raw": [float(i), -float(i)], "calibrated": [0.5 + i / 40, 0.5 - i / 40]}}
               for i in range(1, 21)]
    learner.append({"step": 21, "time": 21.0})  # an exploratory step: no PRMU term
    dist = prmu_distribution(learner)
    assert dist["n"] == 40 and dist["raw_quantiles"]["p50"] in (0.0, 1.0, -1.0)
    assert dist["saturated_frac"] == pytest.approx(2 / 40)  # 0.5 +- 20/40 = 1.0 and 0.0
    assert "40 RL responses" in prmu_note(dist)
    report = build_report({p: constant(0.5, 0.5) for p in ("sft", "rl")}, resamples=50)
    names = plot_report(report, learner, [], {"examine_examples": 3}, dist, tmp_path)
    assert "prmu_scores.png" in names and (tmp_path / "prmu_scores.png").stat().st_size > 0
    assert prmu_distribution(learner[-1:]) is None
    assert "prmu_scores.png" not in plot_report(report, learner[-1:], [], {}, None, tmp_path)


def test_the_serving_commands_ask_for_a_user_in_a_request_the_service_reads(tmp_path):
    import shlex

    from services.policy.chat import ChatCompletionRequest

    question = "Which tag? description: a film with \"quotes\" and 'apostrophes'"
    serve, curl = serving_commands("run/tagpr_config.yaml", str(tmp_path / "my policy"), "data/synthetic", "u 7",
                                   question, "tagpr-policy")
    assert shlex.split(serve) == ["tagpr", "serve", "policy", "--config", "run/tagpr_config.yaml", "--policy",
                                  str(tmp_path / "my policy"), "--profiles", "data/synthetic"]
    body = shlex.split(curl)[-1]
    req = ChatCompletionRequest.model_validate_json(body)
    assert (req.user, req.messages[-1].content, req.model) == ("u 7", question, "tagpr-policy")
    assert serving_section([serve, curl]).rstrip().endswith("```")
