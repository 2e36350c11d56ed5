"""The SFT loop: token-level cross-entropy on assistant tokens, with dev loss.

The loop drives a *stepper* (``forward(**batch)``, ``step(loss)``, ``train(mode)``): plain torch in
unit tests, DDP or DeepSpeed under Ray Train (``actors/train_strategy.py``).
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence

import torch

from tagpr.config import SFTConfig
from tagpr.schedule import lr_at
from tagpr.sft.data import SFTData, collate, collate_packed


class Stepper(Protocol):
    def forward(self, **batch): ...

    def step(self, loss: torch.Tensor) -> None: ...

    def train(self, mode: bool = True) -> None: ...

    def set_lr(self, lr: float) -> None: ...


def row_length(cfg: SFTConfig) -> int:
    """The ``pack_to`` of :func:`batches` that ``cfg`` asks for: ``max_length`` when packing, else 0."""
    return cfg.max_length if cfg.packing else 0


def epoch_order(lengths: Sequence[int], cfg: SFTConfig, epoch: int, seed: int = 0, rank: int = 0,
                world: int = 1) -> torch.Tensor:
    """The example indices ``rank`` trains on in ``epoch``, in batch order: a seeded shuffle, this rank's
    share, then each run of ``cfg.length_grouping`` batches sorted longest first, so a batch pads to
    nearly its own examples' lengths while the runs keep the shuffle's mix across the epoch."""
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen)[rank::world]
    if cfg.length_grouping <= 1:
        return order
    lengths = torch.tensor(lengths)
    return torch.cat([run[torch.argsort(lengths[run], descending=True, stable=True)]
                      for run in order.split(cfg.batch_size * cfg.length_grouping)])


def batches(data: SFTData, batch_size: int, order: torch.Tensor, pad_id: int, pack_to: int = 0):
    """(model inputs, tokens in them, pads left out) per ``batch_size`` examples of ``order``: padded
    rows, or with ``pack_to`` the same examples packed into rows of up to that many tokens."""
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size].tolist()
        ids, labels = [data.input_ids[i] for i in rows], [data.labels[i] for i in rows]
        batch = collate_packed(ids, labels, pad_id, pack_to) if pack_to else collate(ids, labels, pad_id)
        yield batch, sum(map(len, ids))


@torch.no_grad()
def eval_loss(stepper: Stepper, data: SFTData, batch_size: int, pad_id: int, pack_to: int = 0) -> float:
    """Mean cross-entropy per assistant token (HF shifts the labels inside the model)."""
    stepper.train(False)
    total, count = 0.0, 0
    for batch, _ in batches(data, batch_size, torch.arange(len(data)), pad_id, pack_to):
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += stepper.forward(**batch).loss.item() * n
        count += n
    stepper.train(True)
    return total / max(count, 1)


def train_epochs(stepper: Stepper, train: SFTData, dev: SFTData | None, cfg: SFTConfig, pad_id: int,
                 start_epoch: int = 0, rank: int = 0, world: int = 1, seed: int = 0,
                 on_epoch: Callable[[int, dict], None] | None = None,
                 log: Callable[[str], None] | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> list[dict]:
    """Epochs ``start_epoch..cfg.epochs``; ``log`` gets a progress line about every tenth of an epoch,
    ``on_step`` (steps done, steps in all epochs) every step. An epoch's ``tokens_per_s`` counts the
    tokens its steps trained on (pad tokens left out), from the first step's end, so start-up costs
    (first-use compiles, allocator warm-up) stay out of it."""
    history = []
    pack_to = row_length(cfg)
    stepper.train(True)
    for epoch in range(start_epoch, cfg.epochs):
        order = epoch_order([len(ids) for ids in train.input_ids], cfg, epoch, seed, rank, world)
        n_steps = -(-len(order) // cfg.batch_size)
        every, start = max(1, n_steps // 10), time.perf_counter()
        total, steps, tokens, warm = 0.0, 0, 0, None
        for batch, n_tokens in batches(train, cfg.batch_size, order, pad_id, pack_to):
            stepper.set_lr(lr_at(epoch * n_steps + steps, cfg.epochs * n_steps, cfg))
            loss = stepper.forward(**batch).loss
            stepper.step(loss)
            total += loss.item()
            steps += 1
            if warm is None:
                warm = time.perf_counter()
            else:
                tokens += n_tokens
            if on_step:
                on_step(epoch * n_steps + steps, cfg.epochs * n_steps)
            if log and (steps % every == 0 or steps == n_steps):
                rate = steps / (time.perf_counter() - start)
                log(f"sft epoch {epoch + 1}/{cfg.epochs} step {steps}/{n_steps} loss {total / steps:.4f} "
                    f"lr {lr_at(epoch * n_steps + steps - 1, cfg.epochs * n_steps, cfg):.2e} "
                    f"({rate:.2f} steps/s, {(n_steps - steps) / rate:.0f} s left in epoch)")
        stats = {"epoch": epoch + 1, "train_loss": total / max(steps, 1),
                 "tokens_per_s": tokens / (time.perf_counter() - warm) if tokens else 0.0}
        if dev is not None and len(dev):
            stats["dev_loss"] = eval_loss(stepper, dev, cfg.batch_size, pad_id, pack_to)
        history.append(stats)
        if on_epoch:
            on_epoch(epoch + 1, stats)
    return history
