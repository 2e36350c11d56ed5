"""What the PRMU sees of a (user, input, response): texts first, then embedding tensors."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch

from tagpr.lamp.tasks import LampTask, get_task
from tagpr.prmu.encoder import SentenceEncoder


@dataclass(frozen=True)
class PRMUExample:
    task: str
    profile: tuple[tuple[str, str], ...]  # per item: (label text, context text), LampTask.profile_item_parts
    input: str
    answer: str  # written like a profile label (LampTask.output_text)
    user_id: str | None = None


def without_user(example: PRMUExample) -> PRMUExample:
    """The example with its profile and user id removed: all that the user-blind baseline may see."""
    return replace(example, profile=(), user_id=None)


def answer_text(task: LampTask, input_text: str, answer: str) -> str:
    """The answer as something an encoder can compare: LaMP-1's ``[k]`` becomes reference k's title."""
    if task.name == "LaMP_1":
        refs = re.findall(r'\[(\d)\]: "(.*?)"', input_text)
        chosen = dict(refs).get(answer.strip().strip("[]"))
        if chosen is not None:
            return chosen
    return answer


def make_example(task: str, profile: Sequence[Mapping[str, Any]], input_text: str, answer: str,
                 user_id: str | None = None, reasoning: str | None = None) -> PRMUExample:
    t = get_task(task)
    text = t.output_text(answer_text(t, input_text, answer))
    if reasoning:
        text = f"{reasoning}\n{text}"
    return PRMUExample(t.name, tuple(t.profile_item_parts(item) for item in profile), input_text, text, user_id)


def example_from_judged(j, include_reasoning: bool = False) -> PRMUExample:
    """A judged response (``tagpr.rewards.Judged``) as the PRMU sees it: the parsed answer, or the
    whole response when no answer parses; optionally the reasoning sections before it."""
    answer = j.checked.answer if j.checked.answer is not None else j.item.response
    reasoning = None
    if include_reasoning and j.checked.answer is not None:
        reasoning = "\n".join(s.text for s in j.checked.parsed.sections[:-1])  # all but the answer
    p = j.item.prompt
    return make_example(j.task.name, p.profile, p.input, answer, p.user_id, reasoning)


@dataclass
class PRMUBatch:
    items: torch.Tensor  # [B, P, 2D] profile items: [label embedding; context embedding], zero-padded
    mask: torch.Tensor  # [B, P] True where an item exists
    query: torch.Tensor  # [B, D] input embedding
    answer: torch.Tensor  # [B, D] answer embedding
    user_idx: torch.Tensor  # [B] index into the learned user table, -1 for unseen users

    def index(self, rows: torch.Tensor) -> "PRMUBatch":
        return PRMUBatch(self.items[rows], self.mask[rows], self.query[rows], self.answer[rows], self.user_idx[rows])


def embed_examples(examples: Sequence[PRMUExample], encoder: SentenceEncoder,
                   user_index: Mapping[str, int] | None = None) -> PRMUBatch:
    """Encode every distinct text once and assemble padded tensors."""
    user_index = user_index or {}
    n, p = len(examples), max((len(e.profile) for e in examples), default=0) or 1
    texts = [t for e in examples for part in e.profile for t in part]
    texts += [e.input for e in examples] + [e.answer for e in examples]
    vecs = encoder.encode(texts)
    items = torch.zeros(n, p, 2 * encoder.dim)
    mask = torch.zeros(n, p, dtype=torch.bool)
    offset = 0
    for i, e in enumerate(examples):
        k = len(e.profile)
        items[i, :k] = vecs[offset : offset + 2 * k].reshape(k, 2 * encoder.dim)
        mask[i, :k] = True
        offset += 2 * k
    query, answer = vecs[offset : offset + n], vecs[offset + n : offset + 2 * n]
    user_idx = torch.tensor([user_index.get(e.user_id, -1) if e.user_id else -1 for e in examples], dtype=torch.long)
    return PRMUBatch(items, mask, query, answer, user_idx)
