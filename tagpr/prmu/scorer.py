"""Scoring with a trained PRMU: the object the reward service and in-process rewards call.

RL prompts come from the PRMU's own training split, so by default the scorer leaves out the
learned user-id embeddings: a reward read off an id embedding trained on that user's golds would
recognise the user instead of reading the profile. Every user is then scored as an unseen one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tagpr.prmu import checkpoint
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUExample, example_from_judged
from tagpr.rewards import Judged


class PRMUScorer:
    def __init__(self, net, meta: dict, user_index: dict[str, int], encoder: SentenceEncoder,
                 score_with_user_id: bool = False):
        self.net, self.meta, self.user_index, self.encoder = net, meta, user_index, encoder
        self.include_reasoning = bool(meta["config"].get("include_reasoning", False))
        self.score_with_user_id = score_with_user_id

    @classmethod
    def load(cls, path: str | Path, allow_hub: bool = False, score_with_user_id: bool | None = None) -> "PRMUScorer":
        """``score_with_user_id`` None: the checkpoint's training config decides (``prmu.score_with_user_id``)."""
        net, meta, users = checkpoint.load(path)
        cfg = meta["config"]
        encoder = SentenceEncoder(meta["encoder"], cfg["max_length"], cache_size=cfg["embedding_cache"],
                                  allow_hub=allow_hub)
        encoder.load_cache(Path(path) / checkpoint.EMBEDDINGS)
        if score_with_user_id is None:
            score_with_user_id = bool(cfg.get("score_with_user_id", False))
        return cls(net, meta, users, encoder, score_with_user_id)

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def score_stats(self) -> tuple[float, float] | None:
        """(mean, std) of the raw score over the training pairs; None for checkpoints that predate them."""
        stats = self.meta.get("score_stats")
        return (float(stats["mean"]), float(stats["std"])) if stats else None

    @torch.no_grad()
    def score_examples(self, examples: Sequence[PRMUExample]) -> list[float]:
        if not examples:
            return []
        users = self.user_index if self.score_with_user_id else {}
        return self.net(self.net.featurize(examples, self.encoder, users)).tolist()

    def score(self, batch: Sequence[Judged]) -> list[float]:
        """``PersonalizationScorer`` for ``tagpr.rewards``."""
        return self.score_examples([example_from_judged(j, self.include_reasoning) for j in batch])
