"""The rollout pool's automatic scaling policy: pure decisions from the learner's wait and the
workers' back-pressure over a window."""

import pytest

from tagpr.rl.autoscale import AutoscalePolicy


def policy(**kw):
    args = dict(min_workers=1, max_workers=3, grow_above=0.3, shrink_above=0.5, window_s=30, cooldown_s=30)
    return AutoscalePolicy(**{**args, **kw})


def feed(p, start, n, wait_frac, blocked_frac, size, dt=10.0):
    """``n`` windows of ``dt`` seconds ending after ``start``; the decisions made."""
    out = []
    for i in range(1, n + 1):
        d = p.observe(start + i * dt, dt, wait_frac * dt, blocked_frac * dt * size, size)
        if d:
            out.append((start + i * dt, d))
            size = d.size
    return out


def test_grows_when_the_learner_waits_after_a_full_window():
    p = policy()
    assert p.observe(10, 10, 8, 0, 1) is None and p.observe(20, 10, 8, 0, 1) is None  # 20 s < window
    d = p.observe(30, 10, 8, 0, 1)
    assert d.size == 2 and d.previous == 1 and d.direction == "up"
    assert d.learner_wait_frac == pytest.approx(0.8) and "80%" in d.reason


def test_shrinks_when_workers_are_blocked_by_back_pressure():
    [(_, d)] = feed(policy(), 0, 3, wait_frac=0.0, blocked_frac=0.9, size=3)
    assert (d.size, d.direction) == (2, "down") and d.rollout_blocked_frac == pytest.approx(0.9)


def test_blocked_fraction_is_per_worker():
    """Two workers each blocked 40% is 0.4 of the pool, under the 0.5 threshold, not 0.8."""
    assert feed(policy(), 0, 6, wait_frac=0.0, blocked_frac=0.4, size=2) == []


@pytest.mark.parametrize("wait,blocked", [(0.1, 0.1), (0.8, 0.9)])
def test_no_decision_when_balanced_or_when_both_signals_fire(wait, blocked):
    assert feed(policy(), 0, 9, wait_frac=wait, blocked_frac=blocked, size=2) == []


def test_respects_the_bounds():
    assert feed(policy(), 0, 9, wait_frac=1.0, blocked_frac=0.0, size=3) == []  # at max
    assert feed(policy(), 0, 9, wait_frac=0.0, blocked_frac=1.0, size=1) == []  # at min


def test_cooldown_and_a_fresh_window_separate_decisions():
    decisions = feed(policy(cooldown_s=60), 0, 12, wait_frac=1.0, blocked_frac=0.0, size=1)
    times = [t for t, _ in decisions]
    assert [d.size for _, d in decisions] == [2, 3]
    assert times[0] == 30 and times[1] - times[0] >= 60  # cooldown, then a full window at the new size


def test_old_measurements_leave_the_window():
    p = policy()
    feed(p, 0, 3, wait_frac=0.0, blocked_frac=0.0, size=2)  # balanced for 30 s
    # the first 10 s of balance leave the window: 10 of the last 30 s waiting (0.33) > 0.3
    decisions = feed(p, 30, 2, wait_frac=1.0, blocked_frac=0.0, size=2)
    assert [(t, d.size) for t, d in decisions] == [(40, 3)]


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="min_workers"):
        policy(min_workers=4, max_workers=2)
