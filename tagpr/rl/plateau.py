"""When a stage has stopped paying off (``plateau_patience``, ``plateau_delta`` of a stage)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Plateau:
    """Stop a stage when its mean reward has not improved by ``delta`` for ``patience`` steps."""

    patience: int
    delta: float
    best: float | None = None
    since: int = 0

    def update(self, reward: float) -> bool:
        if self.best is None or reward > self.best + self.delta:
            self.best, self.since = reward, 0
        else:
            self.since += 1
        return bool(self.patience) and self.since >= self.patience

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the settings come from the stage's config."""
        return {"best": self.best, "since": self.since}
