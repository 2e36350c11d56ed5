"""Preference pairs for Bradley-Terry training.

From LaMP-format data: chosen = the user's gold; rejected = the gold another user gave for the
most similar input (nearest inputs by embedding, distinct answers). That negative is a plausible
answer to the same question for *someone*, so only the user's profile separates the two. From
policy samples: within a prompt's group, the high-reward sample over the low-reward one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tagpr.lamp.io import LampSplit
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUExample, make_example


@dataclass(frozen=True)
class Pair:
    chosen: PRMUExample
    rejected: PRMUExample

    @property
    def task(self) -> str:
        return self.chosen.task


def pairs_from_split(split: LampSplit, encoder: SentenceEncoder, negatives: int = 3) -> list[Pair]:
    if split.golds is None:
        raise ValueError(f"{split.task.name} {split.split}: pairs need golds")
    qs = split.questions
    golds = [split.golds[q.id].strip() for q in qs]
    emb = encoder.encode([q.input for q in qs])
    order = torch.argsort(emb @ emb.T, dim=1, descending=True)
    pairs = []
    for i, q in enumerate(qs):
        seen = {golds[i]}
        for j in order[i].tolist():
            if len(seen) > negatives:
                break
            if qs[j].user_id == q.user_id or golds[j] in seen:
                continue
            seen.add(golds[j])
            pairs.append(Pair(
                make_example(split.task.name, q.profile, q.input, golds[i], q.user_id),
                make_example(split.task.name, q.profile, q.input, golds[j], q.user_id),
            ))
    return pairs


def pairs_from_samples(group: Sequence[tuple[PRMUExample, float]], min_gap: float = 0.1) -> list[Pair]:
    """Best vs worst sample of one prompt's group, when their rewards differ by at least ``min_gap``."""
    if len(group) < 2:
        return []
    ranked = sorted(group, key=lambda x: x[1])
    (worst, lo), (best, hi) = ranked[0], ranked[-1]
    return [Pair(best, worst)] if hi - lo >= min_gap else []


def pairs_for_tasks(root: str, tasks: Sequence[str], split: str, encoder: SentenceEncoder, negatives: int,
                    skip_invalid: bool = False) -> tuple[list[Pair], list[str]]:
    """Pairs of every task's ``split``, and the user ids seen (in order of first appearance)."""
    from tagpr.lamp.io import load_split

    pairs: list[Pair] = []
    users: dict[str, None] = {}
    for task in tasks:
        s = load_split(root, task, split, skip_invalid)
        pairs += pairs_from_split(s, encoder, negatives)
        users.update((q.user_id, None) for q in s.questions if q.user_id)
    return pairs, list(users)
