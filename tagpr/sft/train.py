"""The SFT loop: token-level cross-entropy on assistant tokens, with dev loss.

The loop drives a *stepper* (``forward(**batch)``, ``step(loss)``, ``train(mode)``): plain torch in
unit tests, DDP or DeepSpeed under Ray Train (``actors/train_strategy.py``).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from tagpr.config import SFTConfig
from tagpr.schedule import lr_at
from tagpr.sft.data import IGNORE, SFTData, collate, collate_packed, collate_responses


class Stepper(Protocol):
    def forward(self, **batch): ...

    def step(self, loss: torch.Tensor) -> None: ...

    def train(self, mode: bool = True) -> None: ...

    def set_lr(self, lr: float) -> None: ...


def sft_module(model: torch.nn.Module, cfg: SFTConfig, data: SFTData) -> torch.nn.Module:
    """The module SFT trains: ``model``, or, where chains share prompts (several per question) and
    ``cfg.shared_prefix`` allows it, ``model`` in a :class:`tagpr.rl.forward.ResponseLM` that runs each
    distinct prompt of a batch once and its chains on its key/value cache (train with ``by_prompt``)."""
    if cfg.shared_prefix == "off" or cfg.packing or len(data.prompt_groups()) == len(data):
        return model
    from tagpr.rl.forward import response_lm

    return response_lm(model, cfg.shared_prefix)


def row_length(cfg: SFTConfig) -> int:
    """The ``pack_to`` of :func:`batches` that ``cfg`` asks for: ``max_length`` when packing, else 0."""
    return cfg.max_length if cfg.packing else 0


def epoch_order(lengths: Sequence[int], cfg: SFTConfig, epoch: int, seed: int = 0, rank: int = 0,
                world: int = 1, groups: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """The example indices ``rank`` trains on in ``epoch``, in batch order: a seeded shuffle of the
    ``groups`` (each example alone by default; a prompt's chains stay next to each other, so they share
    a batch and its prefix), this rank's contiguous share, then each run of ``cfg.length_grouping``
    batches sorted longest first, so a batch pads to nearly its own examples' lengths while the runs
    keep the shuffle's mix across the epoch."""
    groups = groups or [[i] for i in range(len(lengths))]
    gen = torch.Generator().manual_seed(seed + epoch)
    shuffled = [groups[g] for g in torch.randperm(len(groups), generator=gen).tolist()]
    n = sum(map(len, shuffled))
    lo, hi, at, mine = rank * n // world, (rank + 1) * n // world, 0, []
    for g in shuffled:  # a group split only where one rank's share ends
        if kept := g[max(0, lo - at):max(0, hi - at)]:
            mine.append(kept)
        at += len(g)
    if cfg.length_grouping > 1:
        size, runs = cfg.batch_size * cfg.length_grouping, [[]]
        for g in mine:
            if sum(map(len, runs[-1])) >= size:
                runs.append([])
            runs[-1].append(g)
        mine = [g for run in runs for g in sorted(run, key=lambda g: -max(lengths[i] for i in g))]
    return torch.tensor([i for g in mine for i in g], dtype=torch.long)


def batches(data: SFTData, batch_size: int, order: torch.Tensor, pad_id: int, pack_to: int = 0,
            by_prompt: bool = False):
    """(model inputs, tokens in them, pads left out) per ``batch_size`` examples of ``order``: padded
    rows, with ``pack_to`` the same examples packed into rows of up to that many tokens, or with
    ``by_prompt`` :class:`tagpr.rl.forward.ResponseLM`'s inputs, each distinct prompt once."""
    collate_fn = collate_responses if by_prompt else partial(collate_packed, row_length=pack_to) if pack_to else collate
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size].tolist()
        ids, labels = [data.input_ids[i] for i in rows], [data.labels[i] for i in rows]
        yield collate_fn(ids, labels, pad_id), sum(map(len, ids))


def batch_loss(stepper: Stepper, batch: dict) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy per target token, and the number of target tokens. HF computes it from
    ``labels`` (shifting them inside the model); :class:`ResponseLM` returns the logits that predict each
    response token."""
    if "prompt_ids" not in batch:
        return stepper.forward(**batch).loss, int((batch["labels"][:, 1:] != IGNORE).sum())
    labels = batch["labels"]
    logits = stepper.forward(**{k: v for k, v in batch.items() if k != "labels"})
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=IGNORE)
    return loss, int((labels != IGNORE).sum())


@torch.no_grad()
def eval_loss(stepper: Stepper, data: SFTData, batch_size: int, pad_id: int, pack_to: int = 0,
              by_prompt: bool = False) -> float:
    """Mean cross-entropy per assistant token."""
    stepper.train(False)
    total, count = 0.0, 0
    for batch, _ in batches(data, batch_size, torch.arange(len(data)), pad_id, pack_to, by_prompt):
        loss, n = batch_loss(stepper, batch)
        total += loss.item() * n
        count += n
    stepper.train(True)
    return total / max(count, 1)


def train_epochs(stepper: Stepper, train: SFTData, dev: SFTData | None, cfg: SFTConfig, pad_id: int,
                 start_epoch: int = 0, rank: int = 0, world: int = 1, seed: int = 0,
                 on_epoch: Callable[[int, dict], None] | None = None,
                 log: Callable[[str], None] | None = None,
                 on_step: Callable[[int, int], None] | None = None, by_prompt: bool = False) -> list[dict]:
    """Epochs ``start_epoch..cfg.epochs``; ``log`` gets a progress line about every tenth of an epoch,
    ``on_step`` (steps done, steps in all epochs) every step. With ``by_prompt`` the stepper runs a
    :class:`tagpr.rl.forward.ResponseLM` (:func:`sft_module`) and a prompt's chains train in one batch.
    An epoch's ``tokens_per_s`` counts the tokens its steps trained on (pad tokens left out), from the
    first step's end, so start-up costs (first-use compiles, allocator warm-up) stay out of it."""
    history = []
    pack_to = row_length(cfg)
    groups = train.prompt_groups() if by_prompt else None
    stepper.train(True)
    for epoch in range(start_epoch, cfg.epochs):
        order = epoch_order([len(ids) for ids in train.input_ids], cfg, epoch, seed, rank, world, groups)
        n_steps = -(-len(order) // cfg.batch_size)
        every, start = max(1, n_steps // 10), time.perf_counter()
        total, steps, tokens, warm = 0.0, 0, 0, None
        for batch, n_tokens in batches(train, cfg.batch_size, order, pad_id, pack_to, by_prompt):
            stepper.set_lr(lr_at(epoch * n_steps + steps, cfg.epochs * n_steps, cfg))
            loss, _ = batch_loss(stepper, batch)
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
            stats["dev_loss"] = eval_loss(stepper, dev, cfg.batch_size, pad_id, pack_to, by_prompt)
        history.append(stats)
        if on_epoch:
            on_epoch(epoch + 1, stats)
    return history
