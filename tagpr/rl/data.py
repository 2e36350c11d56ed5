"""The RL prompt set: LaMP questions with what rewards need (gold, profile), keyed ``task/question-id``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tagpr.config import TagPRConfig
from tagpr.lamp.io import load_split


@dataclass(frozen=True)
class RLPrompt:
    id: str
    task: str
    input: str
    profile: tuple[Mapping[str, Any], ...]
    gold: str
    user_id: str | None = None

    def reward_item(self, response: str) -> dict[str, Any]:
        """The reward service's item shape (``services/reward/schemas.py``)."""
        item = {"task": self.task, "input": self.input, "response": response, "gold": self.gold,
                "profile": [dict(p) for p in self.profile]}
        if self.user_id:
            item["user_id"] = self.user_id
        return item


def load_prompts(cfg: TagPRConfig, split: str | None = None) -> dict[str, RLPrompt]:
    split = split or cfg.data.train_split
    prompts: dict[str, RLPrompt] = {}
    for task in cfg.data.tasks:
        s = load_split(cfg.data.root, task, split, cfg.data.skip_invalid)
        for q in s.questions:
            pid = f"{task}/{q.id}"
            prompts[pid] = RLPrompt(pid, task, q.input, tuple(q.profile), s.golds[q.id], q.user_id)
    return prompts
