"""The RL prompt set: ``data.rl_split``'s questions (else the train split's) with their golds, keyed
``task/question-id``."""

from __future__ import annotations

from tagpr.config import TagPRConfig
from tagpr.lamp.io import Prompt, load_split


def load_prompts(cfg: TagPRConfig, split: str | None = None) -> dict[str, Prompt]:
    split = split or cfg.data.rl_split or cfg.data.train_split
    return {q.key: q for task in cfg.data.tasks
            for q in load_split(cfg.data.root, task, split, cfg.data.skip_invalid).questions}
