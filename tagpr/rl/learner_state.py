"""The learner's bookkeeping, without Ray or torch: where it is in the stages, when it publishes and
checkpoints, and what one step reports. ``actors/learner.py`` runs the loop around it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tagpr.rl.plateau import Plateau


@dataclass
class LearnerState:
    """``step`` counts learner steps over all stages, so the weights after it are policy version
    ``step``; ``stage_step`` counts this stage's; ``plateau`` is the stage's plateau detector. Saved
    in every checkpoint (:meth:`saved`)."""

    stage_index: int
    plateau: Plateau
    step: int = 0
    stage_step: int = 0

    @classmethod
    def start(cls, stage_index: int, patience: int, delta: float,
              saved: Mapping[str, Any] | None = None) -> LearnerState:
        """Stage ``stage_index``'s state (``patience``, ``delta``: its plateau settings) from a
        checkpoint's: the same stage continues where it was, plateau detector included (a crash,
        ``--resume``); an earlier stage's final checkpoint (a stage start) keeps the step count and
        starts this stage at 0; no checkpoint starts at 0."""
        if saved is None:
            return cls(stage_index, Plateau(patience, delta))
        if saved["stage_index"] != stage_index:
            return cls(stage_index, Plateau(patience, delta), saved["step"])
        return cls(stage_index, Plateau(patience, delta, **saved["plateau"]), saved["step"], saved["stage_step"])

    def advance(self, reward_mean: float, stage_steps: int) -> tuple[bool, bool]:
        """Count a finished step and feed the plateau detector: (whether the plateau stops the stage,
        whether the stage ends with this step)."""
        self.step += 1
        self.stage_step += 1
        stop = self.plateau.update(reward_mean)
        return stop, stop or self.stage_step >= stage_steps

    def publish_due(self, sync_every: int, last: bool) -> bool:
        """Publish the weights after this step: every ``sync_every`` steps, and at the stage's end."""
        return last or self.step % sync_every == 0

    def checkpoint_due(self, every: int, last: bool) -> bool:
        """Checkpoint after this step: every ``every`` stage steps (0: never), and at the stage's end."""
        return last or bool(every and self.stage_step % every == 0)

    def saved(self, stage_name: str) -> dict[str, Any]:
        return {"stage_index": self.stage_index, "step": self.step, "stage_step": self.stage_step,
                "plateau": self.plateau.state(), "stage": stage_name}


def step_metrics(state: LearnerState, stage_name: str, groups: Sequence, rows: int, stats: Mapping[str, float],
                 tokens: int, seconds: float, waited: float, sync_s: float, lr: float,
                 plateau_stop: bool) -> dict[str, Any]:
    """What one learner step reports beside the reward and loss statistics: throughput, the time it
    waited for the buffer, staleness of what it consumed (``groups`` carry ``policy_version``),
    learning rate. ``state`` is after the step; ``stats`` are the loss statistics per token."""
    staleness = [state.step - 1 - g.policy_version for g in groups]
    return {
        **stats, "stage": stage_name, "stage_step": state.stage_step, "version": state.step,
        "trajectories": rows, "tokens": tokens, "step_s": seconds,
        "trajectories_per_s": rows / seconds, "tokens_per_s": tokens / seconds,
        "learner_wait_frac": waited / seconds, "weight_sync_s": sync_s,
        "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
        "staleness_hist": {str(s): staleness.count(s) for s in sorted(set(staleness))},
        "lr": lr, "plateau_stop": plateau_stop, "prompts": sorted(g.prompt.key for g in groups),
    }
