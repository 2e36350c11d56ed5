"""The run report: per-task official metrics of base, SFT and RL and the average relative
improvement over base, with MAE counted as lower-is-better."""

import pytest

from tagpr.report import build_report, relative_improvement, render_markdown


def evaluation(task_score, lamp2_acc, lamp3_mae):
    return {"task_score": task_score, "format_valid": 1.0, "tag_score": 0.9,
            "tasks": {"LaMP_2": {"n": 10, "accuracy": lamp2_acc, "f1": 0.1},
                      "LaMP_3": {"n": 10, "mae": lamp3_mae, "rmse": 1.0}}}


def test_relative_improvement_flips_for_lower_is_better():
    assert relative_improvement(0.6, 0.5, True) == pytest.approx(0.2)
    assert relative_improvement(0.8, 1.0, False) == pytest.approx(0.2)  # MAE down 20% is a gain
    assert relative_improvement(0.3, 0.0, True) is None


def test_report_rows_and_average():
    report = build_report({"base": evaluation(0.4, 0.2, 1.0), "sft": evaluation(0.5, 0.3, 0.8),
                           "rl": evaluation(0.6, 0.4, 0.5)})
    assert report["phases"] == ["base", "sft", "rl"]
    lamp2, lamp3 = report["tasks"]
    assert (lamp2["metric"], lamp2["base"], lamp2["rl"]) == ("accuracy", 0.2, 0.4)
    assert lamp2["rl_rel"] == pytest.approx(1.0) and lamp3["rl_rel"] == pytest.approx(0.5)
    assert report["summary"]["rl"]["avg_relative_improvement"] == pytest.approx(0.75)
    assert report["summary"]["sft"]["avg_relative_improvement"] == pytest.approx((0.5 + 0.2) / 2)
    md = render_markdown(report, "run", notes=["a note"], plots=["dev_metrics.png"])
    assert "| LaMP_3 | mae (lower is better) | 1.000 | 0.800 | 0.500 | +20.0% | +50.0% |" in md
    assert "**+75.0%** (2 of 2 tasks)" in md and "undefined" not in md
    assert "![dev_metrics](dev_metrics.png)" in md and "a note" in md


def test_a_report_needs_the_base_policy():
    with pytest.raises(ValueError, match="base"):
        build_report({"sft": evaluation(0.5, 0.3, 0.8)})


def test_tasks_where_base_scores_zero_are_left_out_of_the_average_and_said_so():
    report = build_report({"base": evaluation(0.1, 0.0, 1.0), "rl": evaluation(0.3, 0.5, 0.5)})
    assert report["tasks"][0]["rl_rel"] is None
    assert report["summary"]["rl"]["avg_relative_improvement"] == pytest.approx(0.5)
    assert report["summary"]["rl"]["relative_improvement_tasks"] == 1
    md = render_markdown(report, "run")
    assert "(1 of 2 tasks)" in md and "undefined where the base policy scores 0" in md and "| n/a |" in md
