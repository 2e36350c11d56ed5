"""Bradley-Terry training of a PRMU on precomputed features, single process or DDP (gloo), its
evaluation against the separately trained user-blind baseline, and its score statistics."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from tagpr.config import PRMUConfig
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.model import PRMUNet
from tagpr.prmu.pairs import Pair


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected).mean()


@dataclass
class PairData:
    chosen: Any
    rejected: Any
    tasks: list[str]

    @classmethod
    def build(cls, net: PRMUNet, pairs: Sequence[Pair], encoder: SentenceEncoder, user_index: dict[str, int]):
        chosen = net.featurize([p.chosen for p in pairs], encoder, user_index)
        rejected = net.featurize([p.rejected for p in pairs], encoder, user_index)
        return cls(chosen, rejected, [p.task for p in pairs])

    def __len__(self) -> int:
        return len(self.tasks)


def fit(net: torch.nn.Module, data: PairData, cfg: PRMUConfig, rank: int = 0, world: int = 1,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``net`` (possibly DDP-wrapped) for ``cfg.epochs``; each rank takes every world-th pair."""
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    history = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(data), generator=gen)[rank::world]
        total, count = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            rows = perm[start : start + cfg.batch_size]
            drop = torch.rand(len(rows), generator=gen) < cfg.user_id_dropout
            c = data.chosen.index(rows).drop_users(drop)
            r = data.rejected.index(rows).drop_users(drop)
            loss = bt_loss(net(c), net(r))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            count += len(rows)
        stats = {"epoch": epoch + 1, "loss": total / max(count, 1)}
        history.append(stats)
        if on_epoch:
            on_epoch(epoch + 1, stats)
    return history


def _batches(n: int, batch_size: int) -> list[torch.Tensor]:
    return [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


@torch.no_grad()
def pairwise_accuracy(net: PRMUNet, data: PairData, batch_size: int = 256) -> dict[str, float]:
    """Fraction of pairs scored chosen > rejected (ties count half), overall and per task."""
    net.eval()
    wins = []
    for rows in _batches(len(data), batch_size):
        c, r = net(data.chosen.index(rows)), net(data.rejected.index(rows))
        wins += ((c > r).float() + 0.5 * (c == r).float()).tolist()
    per_task: dict[str, list[float]] = defaultdict(list)
    for task, w in zip(data.tasks, wins):
        per_task[task].append(w)
    out = {"all": sum(wins) / max(len(wins), 1)}
    out.update({t: sum(v) / len(v) for t, v in sorted(per_task.items())})
    return out


@torch.no_grad()
def score_stats(net: PRMUNet, data: PairData, with_user_id: bool, batch_size: int = 256) -> dict[str, float]:
    """Mean and std of the raw score over the training pairs' examples (chosen and rejected), scored
    as the scorer will (``prmu.score_with_user_id``), so a reward can map raw scores to [0, 1]; the
    std is at least 1e-6 so that it can be divided by."""
    net.eval()
    scores = []
    for feats in (data.chosen, data.rejected):
        for rows in _batches(len(data), batch_size):
            f = feats.index(rows)
            scores.append(net(f if with_user_id else f.drop_users(torch.ones(len(rows), dtype=torch.bool))))
    s = torch.cat(scores)
    return {"mean": s.mean().item(), "std": max(s.std(correction=0).item(), 1e-6)}


def evaluate(prmu: PRMUNet, blind: PRMUNet, pairs: Sequence[Pair], encoder: SentenceEncoder,
             user_index: dict[str, int]) -> dict[str, dict[str, float]]:
    """Pairwise accuracy of the PRMU and of the separately trained user-blind baseline on ``pairs``."""
    return {"prmu": pairwise_accuracy(prmu, PairData.build(prmu, pairs, encoder, user_index)),
            "user_blind": pairwise_accuracy(blind, PairData.build(blind, pairs, encoder, user_index))}
