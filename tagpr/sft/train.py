"""The SFT loop: token-level cross-entropy on assistant tokens, DDP-friendly, with dev loss."""

from __future__ import annotations

from typing import Callable

import torch

from tagpr.config import SFTConfig
from tagpr.sft.data import SFTData, collate


def batches(data: SFTData, batch_size: int, order: torch.Tensor, pad_id: int):
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size].tolist()
        yield collate([data.input_ids[i] for i in rows], [data.labels[i] for i in rows], pad_id)


def loss_on(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over assistant tokens (HF shifts labels inside the model)."""
    return model(**batch).loss


@torch.no_grad()
def eval_loss(model, data: SFTData, batch_size: int, pad_id: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in batches(data, batch_size, torch.arange(len(data)), pad_id):
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += loss_on(model, batch).item() * n
        count += n
    model.train()
    return total / max(count, 1)


def train_epochs(model, optimizer, train: SFTData, dev: SFTData | None, cfg: SFTConfig, pad_id: int,
                 start_epoch: int = 0, rank: int = 0, world: int = 1, seed: int = 0,
                 on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    history = []
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(train), generator=gen)[rank::world]
        total, steps = 0.0, 0
        for batch in batches(train, cfg.batch_size, order, pad_id):
            loss = loss_on(model, batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item()
            steps += 1
        stats = {"epoch": epoch + 1, "train_loss": total / max(steps, 1)}
        if dev is not None and len(dev):
            stats["dev_loss"] = eval_loss(model, dev, cfg.batch_size, pad_id)
        history.append(stats)
        if on_epoch:
            on_epoch(epoch + 1, stats)
    return history
