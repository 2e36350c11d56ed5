"""The learner's bookkeeping without Ray: resuming a stage, publishing and checkpointing cadence,
the plateau stop, and what a step reports."""

import pytest

from tagpr.rl.learner_state import LearnerState, step_metrics
from tagpr.rl.plateau import Plateau
from tagpr.rl.trajectory import Group, PromptRef


def test_a_stage_starts_fresh_continues_its_own_checkpoint_and_follows_the_previous_stage():
    assert LearnerState.start(0, 2, 0.01) == LearnerState(0, Plateau(2, 0.01))
    mid = {"stage_index": 1, "step": 7, "stage_step": 3, "plateau": {"best": 0.5, "since": 1}, "stage": "x"}
    assert LearnerState.start(1, 2, 0.01, mid) == LearnerState(1, Plateau(2, 0.01, 0.5, 1), 7, 3)  # a crash, --resume
    assert LearnerState.start(2, 2, 0.01, mid) == LearnerState(2, Plateau(2, 0.01), 7)  # the previous stage's end


def test_advance_counts_steps_publishes_and_checkpoints_on_cadence_and_ends_the_stage():
    state = LearnerState.start(0, patience=0, delta=0.0)
    ends, published, checkpointed = [], [], []
    for _ in range(5):
        stop, last = state.advance(0.5, stage_steps=5)
        ends.append(last)
        published.append(state.publish_due(sync_every=2, last=last))
        checkpointed.append(state.checkpoint_due(every=3, last=last))
    assert (state.step, state.stage_step) == (5, 5) and ends == [False] * 4 + [True]
    assert published == [False, True, False, True, True]  # every 2nd step, and the stage's last
    assert checkpointed == [False, False, True, False, True]
    assert not LearnerState(0, Plateau(0, 0.0), stage_step=1).checkpoint_due(every=0, last=False)


def test_a_plateau_ends_the_stage_early_and_its_state_is_saved():
    state = LearnerState.start(0, patience=2, delta=0.01)
    results = [state.advance(r, stage_steps=100) for r in (0.5, 0.5, 0.505)]
    assert results == [(False, False), (False, False), (True, True)]
    saved = state.saved("guided")
    assert saved == {"stage_index": 0, "step": 3, "stage_step": 3, "plateau": {"best": 0.5, "since": 2},
                     "stage": "guided"}
    assert LearnerState.start(0, 2, 0.01, saved) == state


def test_step_metrics_report_staleness_of_what_the_step_consumed():
    state = LearnerState(0, Plateau(0, 0.0), step=4, stage_step=4)  # after the step: it trained on versions 3 and 2
    groups = [Group(PromptRef(0, "b"), [], 3, "w"), Group(PromptRef(0, "a"), [], 2, "w")]
    m = step_metrics(state, "guided", groups, rows=16, stats={"reward_mean": 0.4}, tokens=800, seconds=4.0,
                     waited=1.0, sync_s=0.2, lr=1e-5, plateau_stop=False)
    assert m["staleness_hist"] == {"0": 1, "1": 1} and m["staleness_max"] == 1 and m["staleness_mean"] == 0.5
    assert m["learner_wait_frac"] == 0.25 and m["tokens_per_s"] == 200 and m["trajectories_per_s"] == 4
    assert m["prompts"] == ["0:a", "0:b"] and m["version"] == 4 and m["reward_mean"] == 0.4


def test_fault_injection_is_inert_unless_configured(tmp_path, monkeypatch):
    import actors.faults as faults
    from tagpr.config import LearnerConfig

    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    faults.crash_point(LearnerConfig(), "after_take", 3, 0, tmp_path)
    lc = LearnerConfig(fault_crash_at_step=3, fault_crash_point="after_take")
    faults.crash_point(lc, "checkpoint_write", 3, 0, tmp_path)  # another point
    faults.crash_point(lc, "after_take", 3, 1, tmp_path)  # another rank
    assert killed == []
    faults.crash_point(lc, "after_take", 3, 0, tmp_path)
    faults.crash_point(lc, "after_take", 3, 0, tmp_path)  # the retried run passes the marker
    assert len(killed) == 1 and (tmp_path / "fault-crash-step-3").read_text() == "after_take"


@pytest.mark.parametrize("every", [1, 4])
def test_publish_every_step_or_every_kth(every):
    state = LearnerState.start(0, 0, 0.0)
    due = []
    for _ in range(8):
        _, last = state.advance(0.0, stage_steps=8)
        due.append(state.publish_due(every, last))
    assert sum(due) == 8 // every
