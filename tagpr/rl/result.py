"""What an RL run returns and writes to ``<run>/rl_report.json``; built by the controller in
``actors/controller.py``, read by the RL job, the pipeline and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tagpr.records import Record


@dataclass(frozen=True, kw_only=True)
class RLStage(Record):
    """A finished stage: its final checkpoint's learner state (``trainer_state.json``), then its wall
    time and the policy exported from that checkpoint."""

    stage_index: int
    step: int  # the policy version after the stage
    stage_step: int
    plateau: dict[str, Any]
    stage: str
    lora: bool
    base: str
    seconds: float
    policy: str
    # the rollout pool's time split over the stage (``gen_frac``, ``reward_frac``, ``sync_frac``,
    # ``blocked_frac`` per worker-second) and its tokens/s and groups/s
    rollout: dict[str, float] | None = None


@dataclass(frozen=True, kw_only=True)
class RLResult(Record):
    """The stages that finished, the dev scores (``evaluate_policy``'s output) at the start and after
    each stage, and the roles' records; a role that never started leaves its field None."""

    run_dir: str
    stages: dict[str, RLStage]
    evaluations: dict[str, dict[str, Any]]
    pool_error: str | None = None  # why the pool's watch thread gave up
    buffer: dict[str, Any] | None = None  # the buffer's final stats
    pool_events: list[dict[str, Any]] | None = None
    scale_decisions: list[dict[str, Any]] | None = None
    seconds: float

    @property
    def policy(self) -> str:
        """The last stage's exported policy: what the run produced."""
        return next(reversed(self.stages.values())).policy
