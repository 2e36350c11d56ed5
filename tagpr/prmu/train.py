"""Bradley-Terry training of a PRMU on precomputed features, single process or DDP (gloo)."""

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


@torch.no_grad()
def pairwise_accuracy(net: PRMUNet, data: PairData, zero_user: bool = False, batch_size: int = 256) -> dict[str, float]:
    """Fraction of pairs scored chosen > rejected (ties count half), overall and per task."""
    net.eval()
    wins = []
    for start in range(0, len(data), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(data)))
        c = net(data.chosen.index(rows), zero_user=zero_user)
        r = net(data.rejected.index(rows), zero_user=zero_user)
        wins += ((c > r).float() + 0.5 * (c == r).float()).tolist()
    per_task: dict[str, list[float]] = defaultdict(list)
    for task, w in zip(data.tasks, wins):
        per_task[task].append(w)
    out = {"all": sum(wins) / max(len(wins), 1)}
    out.update({t: sum(v) / len(v) for t, v in sorted(per_task.items())})
    return out


def evaluate(net: PRMUNet, pairs: Sequence[Pair], encoder: SentenceEncoder,
             user_index: dict[str, int]) -> dict[str, dict[str, float]]:
    """Pairwise accuracy of the PRMU and of the same model with the user vector zeroed."""
    data = PairData.build(net, pairs, encoder, user_index)
    return {"prmu": pairwise_accuracy(net, data), "user_blind": pairwise_accuracy(net, data, zero_user=True)}
