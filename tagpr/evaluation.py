"""Dev-set evaluation of a policy: generate, parse the tagged response, score with LaMP's metrics.

Reports R_format (the response parses and its answer is in the answer space), the mean tag
score R_tag, and each task's official metrics on the extracted answers. Generation here is HF
``generate`` (greedy), which any machine can run; the rollout engines bring vLLM.
"""

from __future__ import annotations

from typing import Any

import torch

from tagpr.config import TagPRConfig
from tagpr.lamp.io import load_split
from tagpr.lamp.metrics import score_task
from tagpr.rewards import RewardInput, judge, r_format
from tagpr.sft.data import prompt_text
from tagpr.tags import TagSet


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    tokenizer.padding_side = "left"
    out = []
    model.eval()
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def evaluate_policy(model, tokenizer, cfg: TagPRConfig, split: str | None = None, limit: int = 0) -> dict[str, Any]:
    tags = TagSet(cfg.tags)
    split = split or cfg.data.dev_split
    per_task: dict[str, Any] = {}
    fmt, tag_scores = [], []
    for task in cfg.data.tasks:
        s = load_split(cfg.data.root, task, split, cfg.data.skip_invalid)
        questions = s.questions[: limit or None]
        prompts = [prompt_text(tokenizer, tags, task, q.input, q.profile, cfg.data.prompt_profile_items)
                   for q in questions]
        responses = generate(model, tokenizer, prompts, cfg.rollout.max_tokens)
        judged = [judge(tags, RewardInput(task, r, s.golds[q.id], q.input, q.profile))
                  for q, r in zip(questions, responses)]
        f = [r_format(j) for j in judged]
        t = [j.checked.score for j in judged]
        fmt += f
        tag_scores += t
        preds = {q.id: (j.checked.answer or "") for q, j in zip(questions, judged)}
        per_task[task] = {"n": len(questions), "format": sum(f) / len(f), "tag": sum(t) / len(t),
                          **score_task(s.task, preds, {q.id: s.golds[q.id] for q in questions}),
                          "example": responses[0] if responses else ""}
    return {"format_valid": sum(fmt) / len(fmt), "tag_score": sum(tag_scores) / len(tag_scores), "tasks": per_task}
