"""Paired-bootstrap and seed intervals (tagpr.stats): known cases and coverage on synthetic data."""

import numpy as np
import pytest

from tagpr.stats import paired_bootstrap, seed_interval, stratified_paired_bootstrap


def scores(values):
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_identical_policies_give_a_zero_interval():
    a = scores(np.random.default_rng(0).random(50))
    i = paired_bootstrap(a, dict(a))
    assert (i.estimate, i.low, i.high, i.n) == (0.0, 0.0, 0.0, 50) and not i.excludes_zero()


def test_a_constant_shift_is_the_estimate_and_both_ends():
    b = np.random.default_rng(1).random(40)
    i = paired_bootstrap(scores(b + 0.125), scores(b))
    assert i.estimate == pytest.approx(0.125, abs=1e-12)
    assert i.low == pytest.approx(0.125, abs=1e-12) and i.high == pytest.approx(0.125, abs=1e-12)
    assert i.excludes_zero()


def test_pairing_is_by_question_id_not_by_order():
    a = {"x": 1.0, "y": 0.0}
    b = {"y": 0.0, "x": 1.0}
    assert paired_bootstrap(a, b).high == 0.0


def test_different_question_ids_are_refused():
    with pytest.raises(ValueError, match="same question ids"):
        paired_bootstrap({"a": 1.0, "b": 0.0}, {"a": 1.0, "c": 0.0})


def test_the_interval_is_seeded_and_widens_with_noise():
    rng = np.random.default_rng(2)
    b = rng.random(60)
    a = b + rng.normal(0.05, 0.2, 60)
    first, again = paired_bootstrap(scores(a), scores(b), seed=3), paired_bootstrap(scores(a), scores(b), seed=3)
    assert first == again and first.low < first.estimate < first.high
    assert first.estimate == pytest.approx(float(np.mean(a - b)))
    noisier = paired_bootstrap(scores(b + 2 * (a - b)), scores(b), seed=3)
    assert noisier.high - noisier.low > 1.5 * (first.high - first.low)


def test_coverage_of_the_true_mean_difference_is_near_the_level():
    """Over 200 synthetic comparisons with a true difference of 0.1, the 95% interval covers it about 95%
    of the time (the percentile bootstrap runs a little narrow at n = 100)."""
    rng = np.random.default_rng(4)
    covered = 0
    for k in range(200):
        b = rng.random(100)
        a = b + 0.1 + rng.normal(0, 0.3, 100)
        i = paired_bootstrap(scores(a), scores(b), resamples=500, seed=k)
        covered += i.low <= 0.1 <= i.high
    assert 0.88 <= covered / 200 <= 0.99


def test_the_stratified_task_score_weights_tasks_equally_and_resamples_within_them():
    b = {"LaMP_1": scores([0.0] * 10), "LaMP_3": scores([0.5] * 90)}
    a = {"LaMP_1": scores([1.0] * 10), "LaMP_3": scores([0.5] * 90)}
    i = stratified_paired_bootstrap(a, b)
    # each task counts once: (1.0 + 0.0) / 2, not 10 / 100; every resample keeps 10 and 90 questions
    assert (i.estimate, i.low, i.high, i.n) == (0.5, 0.5, 0.5, 10)
    assert stratified_paired_bootstrap(a, a).high == 0.0


def test_the_stratified_interval_covers_per_task_noise():
    rng = np.random.default_rng(5)
    b = {t: scores(rng.random(50)) for t in ("LaMP_1", "LaMP_2")}
    a = {t: {q: v + rng.normal(0.0, 0.3) for q, v in b[t].items()} for t in b}
    i = stratified_paired_bootstrap(a, b, seed=1)
    mean = np.mean([np.mean([a[t][q] - b[t][q] for q in b[t]]) for t in b])
    assert i.estimate == pytest.approx(mean) and i.low < mean < i.high
    with pytest.raises(ValueError, match="same tasks"):
        stratified_paired_bootstrap(a, {"LaMP_1": b["LaMP_1"]})


def test_seed_interval_is_students_t_over_seeds():
    i = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 * 1.0 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(k)
    assert (i.estimate, i.n) == (2.0, 3)
    assert i.low == pytest.approx(2.0 - half) and i.high == pytest.approx(2.0 + half)
    assert seed_interval([0.2, 0.2, 0.2]).low == pytest.approx(0.2)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.3])
