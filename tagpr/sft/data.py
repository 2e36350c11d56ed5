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


@dataclass
class SFTData:
    input_ids: list[list[int]]
    labels: list[list[int]]
    skipped_too_long: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


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


def pack(data: SFTData, max_length: int) -> SFTData:
    """Concatenate examples into rows of at most ``max_length`` tokens (fewer pad tokens per step)."""
    rows, labels, cur, cur_l = [], [], [], []
    for ids, lab in zip(data.input_ids, data.labels):
        if cur and len(cur) + len(ids) > max_length:
            rows.append(cur)
            labels.append(cur_l)
            cur, cur_l = [], []
        cur, cur_l = cur + ids, cur_l + lab
    if cur:
        rows.append(cur)
        labels.append(cur_l)
    return SFTData(rows, labels, data.skipped_too_long)


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
