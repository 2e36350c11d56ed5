"""Chains -> token ids with labels only on the assistant's tokens (the prompt is context, not target)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from tagpr.prompts import messages
from tagpr.tags import TagSet

IGNORE = -100


def prompt_length(labels: Sequence[int]) -> int:
    """Tokens before the first target token: the example's prompt."""
    return next((n for n, y in enumerate(labels) if y != IGNORE), len(labels))


@dataclass
class SFTData:
    input_ids: list[list[int]]
    labels: list[list[int]]
    skipped_too_long: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def prompt_groups(self) -> list[list[int]]:
        """Example indices by prompt, in first-seen order: several chains for one question share it."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(self.input_ids):
            groups.setdefault(tuple(ids[:prompt_length(self.labels[i])]), []).append(i)
        return list(groups.values())


def read_chains(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def prompt_text(tokenizer, tags: TagSet, task: str, input_text: str, profile: Sequence[dict], max_items: int) -> str:
    return tokenizer.apply_chat_template(messages(tags, task, input_text, profile, max_items), tokenize=False,
                                         add_generation_prompt=True)


def tokenize_chains(chains: Sequence[dict], tokenizer, tags: TagSet, max_items: int, max_length: int) -> SFTData:
    data = SFTData([], [])
    for c in chains:
        profile = json.loads(c["profile"]) if isinstance(c["profile"], str) else c["profile"]
        prompt = tokenizer(prompt_text(tokenizer, tags, c["task"], c["input"], profile, max_items),
                           add_special_tokens=False)["input_ids"]
        target = tokenizer(c["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        if len(prompt) + len(target) > max_length:
            data.skipped_too_long += 1
            continue
        data.input_ids.append(prompt + target)
        data.labels.append([IGNORE] * len(prompt) + target)
    return data


def collate(ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    label_t = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids[i, : len(x)] = torch.tensor(x)
        label_t[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "labels": label_t, "attention_mask": mask}


def collate_responses(ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """The same examples as :func:`collate` as :class:`tagpr.rl.forward.ResponseLM`'s inputs (each
    distinct prompt once) and ``labels``, the response tokens to predict (``IGNORE`` on padding)."""
    from tagpr.rl.forward import response_inputs

    cut = [prompt_length(y) for y in labels]
    batch = response_inputs([x[:n] for x, n in zip(ids, cut)], [x[n:] for x, n in zip(ids, cut)], pad_id)
    batch["labels"] = batch["response_ids"].masked_fill(batch["response_attention"] == 0, IGNORE)
    return batch


def collate_packed(ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int,
                   row_length: int) -> dict[str, torch.Tensor]:
    """The same examples as :func:`collate`, laid out in fewer, fuller rows of up to ``row_length``
    tokens (first-fit, longest first), and no wider than the batch's longest example: attention costs
    the square of a row's width, so a row wider than the padded batch would spend on attention what
    packing saves on pad tokens. Position ids restart at each example and there is no attention
    mask, so transformers builds a block-causal mask from them (it does so only without a KV cache,
    hence ``use_cache``): no example attends to another, and the loss is :func:`collate`'s (a label
    never points across an example's end: each prompt starts with ignored labels). Pad tokens at a
    row's end are their own block, with ignored labels."""
    row_length = min(row_length, max(map(len, ids)))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
        fit = next((r for r, free in enumerate(room) if free >= len(ids[i])), None)
        if fit is None:
            rows.append([])
            room.append(row_length)
            fit = len(rows) - 1
        rows[fit].append(i)
        room[fit] -= len(ids[i])
    width = max(sum(len(ids[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    label_t = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(ids[i])
            input_ids[r, at:at + n] = torch.tensor(ids[i])
            label_t[r, at:at + n] = torch.tensor(labels[i])
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "labels": label_t, "position_ids": positions, "use_cache": False}
