"""Official LaMP scores of the hand-written fixtures, computed by hand in the comments."""

import pytest

from tagpr.errors import TagPRError
from tagpr.lamp.io import load_outputs
from tagpr.lamp.metrics import rating_value, sample_score, score_task
from tagpr.lamp.tasks import get_task

EXPECTED = {
    # golds [1] [2] [1] [2], preds [1] [1] [1] "maybe"(-> -1): 2/4 right.
    # class [1]: TP 2, FP 1, FN 0 -> F1 0.8; class [2]: TP 0 -> F1 0; macro 0.4.
    "LaMP_1": {"accuracy": 0.5, "f1": 0.4},
    # golds comedy sci-fi romance, preds comedy romance " sci-fi " (stripped): 1/3 right;
    # macro-F1 over all 15 labels: only comedy scores (1.0) -> 1/15.
    "LaMP_2": {"accuracy": 1 / 3, "f1": 1 / 15},
    # golds 5 1 3, preds 4, "great" (unparseable, gold 1 -> farther end 5), 3: errors 1 4 0.
    "LaMP_3": {"mae": 5 / 3, "rmse": (17 / 3) ** 0.5},
    # "the cat sat" vs "the cat sat on the mat": P 1, R 1/2 -> 2/3 for both ROUGE-1 and ROUGE-L;
    # reversed "city the to returns rain": ROUGE-1 1.0, LCS 1 of 5 -> ROUGE-L 0.2.
    "LaMP_4": {"rouge-1": (2 / 3 + 1.0) / 2, "rouge-L": (2 / 3 + 0.2) / 2},
    # exact match 1.0 and an empty prediction 0.0.
    "LaMP_5": {"rouge-1": 0.5, "rouge-L": 0.5},
    # "Re: budget review" vs "budget review": P 2/3, R 1 -> 0.8.
    "LaMP_6": {"rouge-1": 0.8, "rouge-L": 0.8},
    # "omg finished my run" vs "finished my run #blessed": 3 of 4 each side -> 0.75.
    "LaMP_7": {"rouge-1": 0.75, "rouge-L": 0.75},
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_fixture_scores(fixtures_dir, task):
    t = get_task(task)
    _, golds = load_outputs(fixtures_dir / task / "dev_outputs.json", t)
    _, preds = load_outputs(fixtures_dir / task / "dev_predictions.json", t)
    scores = score_task(t, preds, golds)
    assert scores == pytest.approx(EXPECTED[task], abs=1e-9)
    assert set(scores) == set(t.metrics)


def test_missing_prediction_is_an_error():
    with pytest.raises(TagPRError, match="have no prediction"):
        score_task(get_task("LaMP_2"), {"1": "comedy"}, {"1": "comedy", "2": "sci-fi"})


def test_rating_mapping():
    assert rating_value(" 4 ", 2.0) == 4.0
    assert rating_value("4.5", 2.0) == 4.5
    assert rating_value("four", 2.0) == 5.0 and rating_value("four", 4.0) == 1.0
    assert rating_value("nan", 1.0) == 5.0


def test_sample_score_per_task_type():
    assert sample_score(get_task("LaMP_2"), " comedy ", "comedy") == 1.0
    assert sample_score(get_task("LaMP_2"), "drama", "comedy") == 0.0
    assert sample_score(get_task("LaMP_3"), "3", "5") == 0.5
    assert sample_score(get_task("LaMP_3"), "x", "5") == 0.0
    assert sample_score(get_task("LaMP_3"), "9", "1") == 0.0
    reversed_words = "city the to returns rain"
    assert sample_score(get_task("LaMP_4"), reversed_words, "rain returns to the city") == pytest.approx(0.2)
    assert sample_score(get_task("LaMP_4"), "city the to returns rain", "rain returns to the city",
                        "mean_rouge1_rougeL") == pytest.approx(0.6)
    assert sample_score(get_task("LaMP_4"), None, "x") == 0.0


def _file(tmp_path, name, task, outputs):
    import json

    path = tmp_path / name
    path.write_text(json.dumps({"task": task, "golds": [{"id": i, "output": o} for i, o in outputs.items()]}))
    return path


def test_null_and_boolean_outputs_score_as_their_python_text(tmp_path):
    """LaMP's evaluator reads an output with ``str()``: null is "None" (off the labels), true is "True"."""
    task = get_task("LaMP_2")
    golds = {"1": "comedy", "2": "sci-fi", "3": "comedy"}
    _, preds = load_outputs(_file(tmp_path, "p.json", "LaMP_2", {"1": None, "2": True, "3": "comedy"}), task)
    assert preds == {"1": "None", "2": "True", "3": "comedy"}
    assert score_task(task, preds, golds)["accuracy"] == pytest.approx(1 / 3)


def test_prediction_ids_must_be_the_gold_ids():
    with pytest.raises(TagPRError, match="1 prediction id.*not in the golds.*'9'"):
        score_task(get_task("LaMP_2"), {"1": "comedy", "9": "comedy"}, {"1": "comedy"})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e39", "-3.5e38"])
def test_a_rating_not_finite_in_float32_is_refused_in_a_file_and_unparseable_elsewhere(value):
    task, golds = get_task("LaMP_3"), {"1": "2", "2": "5"}
    with pytest.raises(TagPRError, match=f"id 1: prediction '{value}' is a number that is not finite in float32"):
        score_task(task, {"1": value, "2": "5"}, golds, strict=True)
    assert score_task(task, {"1": value, "2": "5"}, golds)["mae"] == pytest.approx(1.5)  # 2 -> worst end 5
    assert rating_value(value, 2.0) == 5.0 and sample_score(task, value, "2") == 0.25


def test_ratings_pass_through_float32():
    import numpy as np

    assert rating_value("3.3", 1.0) == float(np.float32(3.3)) != 3.3
    assert rating_value("3e38", 1.0) == float(np.float32(3e38))  # finite in float32: taken at face value
    scores = score_task(get_task("LaMP_3"), {"1": "3.3"}, {"1": "1"}, strict=True)
    assert scores["mae"] == pytest.approx(float(np.float32(3.3)) - 1, abs=0)


@pytest.mark.parametrize("gold", ["five", "", "nan"])
def test_a_rating_gold_that_is_not_a_number_is_named(gold):
    with pytest.raises(TagPRError, match=f"id 7: LaMP_3 gold '{gold}' is not a finite number"):
        score_task(get_task("LaMP_3"), {"7": "3"}, {"7": gold})
    with pytest.raises(ValueError, match="not a finite number"):
        sample_score(get_task("LaMP_3"), "3", gold)
