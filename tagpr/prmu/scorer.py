"""Scoring with a trained PRMU: the object the reward service and in-process rewards call."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tagpr.prmu import checkpoint
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUExample, example_from_judged
from tagpr.rewards import Judged


class PRMUScorer:
    def __init__(self, net, meta: dict, user_index: dict[str, int], encoder: SentenceEncoder):
        self.net, self.meta, self.user_index, self.encoder = net, meta, user_index, encoder
        self.include_reasoning = bool(meta["config"].get("include_reasoning", False))

    @classmethod
    def load(cls, path: str | Path, allow_hub: bool = False) -> "PRMUScorer":
        net, meta, users = checkpoint.load(path)
        cfg = meta["config"]
        encoder = SentenceEncoder(meta["encoder"], cfg["max_length"], cache_size=cfg["embedding_cache"],
                                  allow_hub=allow_hub)
        return cls(net, meta, users, encoder)

    @property
    def version(self) -> str:
        return self.meta["version"]

    @torch.no_grad()
    def score_examples(self, examples: Sequence[PRMUExample]) -> list[float]:
        if not examples:
            return []
        return self.net(self.net.featurize(examples, self.encoder, self.user_index)).tolist()

    def score(self, batch: Sequence[Judged]) -> list[float]:
        """``PersonalizationScorer`` for ``tagpr.rewards``."""
        return self.score_examples([example_from_judged(j, self.include_reasoning) for j in batch])
