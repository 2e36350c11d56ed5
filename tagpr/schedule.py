"""The learning-rate schedule shared by SFT and the RL learner."""

from __future__ import annotations

import math
from typing import Literal, Protocol


class ScheduleConfig(Protocol):
    lr: float
    warmup_steps: int
    lr_schedule: Literal["constant", "cosine"]


def lr_at(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``total`` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
