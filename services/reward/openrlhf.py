"""OpenRLHF's remote reward-model protocol (``--reward.remote_url``, ``--remote_rm_url`` before it).

The client POSTs ``{"query": [...], "prompts": [...], "labels": [...]}`` with no headers of its own:
``query[i]`` is the prompt plus the response, decoded with the special tokens kept (chat template
markers, padding, the EOS at the end); ``labels[i]`` is the dataset's label as it is stored (a JSON
object, a string, or ``""`` when the dataset has no label key). This module turns such a request
into the service's reward items and the results into the answer the client reads. It holds no Ray,
so unit tests cover it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from pydantic import ValidationError

from services.edge import RequestIssues, field_path
from services.reward.schemas import OpenRLHFRequest, OpenRLHFResponse, RewardItem
from tagpr.lamp.io import Prompt
from tagpr.tags import TagSet

# The special-token strings of common chat models' tokenizers: what the service strips when it is
# not given the policy's own (service.strip_tokens).
COMMON_SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",  # ChatML (Qwen, SmolLM)
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "<s>", "</s>", "<unk>", "<pad>",  # Llama 2, Mistral
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",  # Gemma
    "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",  # Phi
)


class QuerySplitter:
    """Cuts the response out of a query: special tokens removed from query and prompt alike (the
    EOS would otherwise be text outside any tagged section and fail the format), then the prompt's
    text taken off the front. A prompt the client truncated (to its ``prompt_max_len``) leaves the
    query starting with the prompt's head (right truncation) or its tail (left truncation); the
    response starts where the longer of the two ends."""

    def __init__(self, specials: Iterable[str], keep: Iterable[str] = ()):
        kept = set(keep)
        strip = sorted({s for s in specials if s and s not in kept}, key=len, reverse=True)
        self.specials = tuple(strip)
        self._pattern = re.compile("|".join(map(re.escape, strip))) if strip else None

    def strip(self, text: str) -> str:
        return self._pattern.sub("", text) if self._pattern else text

    def response(self, query: str, prompt: str) -> str:
        q, p = self.strip(query), self.strip(prompt)
        if not p:
            return q
        if q.startswith(p):
            return q[len(p):]
        return q[max(_common_prefix(q, p), _tail_overlap(q, p)):]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _tail_overlap(query: str, prompt: str, probe: int = 32) -> int:
    """Length of the longest tail of ``prompt`` that ``query`` starts with (0 if none of at least
    ``probe`` characters, or the whole query when shorter): a left-truncated prompt."""
    head = query[:probe]
    if len(head) < probe:
        return 0
    k = prompt.find(head)
    while k != -1:
        if query.startswith(prompt[k:]):
            return len(prompt) - k
        k = prompt.find(head, k + 1)
    return 0


def special_tokens(policy: str, allow_hub: bool) -> Optional[list[str]]:
    """The special-token strings of the policy's tokenizer, or ``None`` when it cannot be read
    (no tokenizer files at ``policy``, hub ids without ``allow_hub``)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(policy, local_files_only=not allow_hub)
    except (OSError, ValueError):
        return None
    added = [t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)]
    return sorted(set(tok.all_special_tokens) | set(added))


def dataset_row(prompt: Prompt, tags: TagSet, max_profile_items: int = 8) -> dict[str, Any]:
    """One row of an OpenRLHF prompt dataset for a LaMP question: the chat messages the policy sees
    (``--input_key messages --apply_chat_template``) and the label the service reads back
    (``--label_key label``): task, gold, the bare LaMP input and the profile the PRMU scores with."""
    from tagpr.prompts import messages

    label = {"task": prompt.task, "gold": prompt.gold, "input": prompt.input,
             "profile": [dict(p) for p in prompt.profile]}
    if prompt.user_id:
        label["user_id"] = prompt.user_id
    return {"messages": messages(tags, prompt.task, prompt.input, prompt.profile, max_profile_items), "label": label}


def label_fields(label: Any, task: Optional[str], i: int) -> dict[str, Any]:
    """A label's reward-item fields: an object (as a JSON value or encoded in a string), or the
    plain gold string when ``?task=`` names the task. Errors name ``labels[i]``."""
    where = field_path("labels", i)
    fields: Any = label
    if isinstance(label, str) and label.strip().startswith("{"):
        try:
            fields = json.loads(label)
        except json.JSONDecodeError as exc:
            raise RequestIssues([(where, f"invalid JSON: {exc.msg}")]) from None
        if not isinstance(fields, dict):
            raise RequestIssues([(where, "expected a JSON object")])
    if isinstance(fields, dict):
        if "response" in fields:
            raise RequestIssues([(f"{where}.response", "not a label field: the response is query[i] after prompts[i]")])
        return {"task": task, **fields} if task else dict(fields)  # the label's own task wins
    if not task:
        reason = "empty: the dataset row has no label; " if label == "" else "a plain gold string needs ?task=LaMP_k; "
        raise RequestIssues([(where, reason + 'or label rows {"task": ..., "gold": ...}')])
    return {"task": task, "gold": label}


@dataclass
class Batch:
    """A request's reward items, and where each item's input came from (for naming fields)."""

    items: list[RewardItem]
    input_in_label: list[bool]

    def field(self, path: str) -> str:
        """A reward item's field path (``items[i].x``) as the OpenRLHF field it came from: the
        response from ``query[i]``, an input the label did not give from ``prompts[i]``, the rest
        from ``labels[i]``."""
        m = _ITEM_FIELD.fullmatch(path)
        if not m:
            return path
        i, name, rest = int(m.group(1)), m.group(2), m.group(3)
        if name == "response":
            return f"query[{i}]{rest}"
        if name == "input" and not self.input_in_label[i]:
            return f"prompts[{i}]{rest}"
        return f"labels[{i}]" + (f".{name}" if name else "") + rest


_ITEM_FIELD = re.compile(r"items\[(\d+)\](?:\.(\w+))?(.*)")


def to_batch(req: OpenRLHFRequest, task: Optional[str], splitter: QuerySplitter) -> Batch:
    """The reward items of a request; every mistake raises :class:`RequestIssues` naming the
    OpenRLHF field (``query[i]``, ``prompts[i]``, ``labels[i].gold``)."""
    n = len(req.query)
    issues = [(k, f"has {len(v)} entries, query has {n}") for k, v in (("prompts", req.prompts),
              ("labels", req.labels)) if v is not None and len(v) != n]
    if req.labels is None:
        issues.append(("labels", "required: the gold answers (JSON objects, or strings with ?task=)"))
    if issues:
        raise RequestIssues(issues)
    batch = Batch([], [])
    for i, (query, label) in enumerate(zip(req.query, req.labels)):
        prompt = req.prompts[i] if req.prompts else ""
        fields = label_fields(label, task, i)
        batch.input_in_label.append("input" in fields)
        fields.setdefault("input", splitter.strip(prompt).strip())
        try:
            batch.items.append(RewardItem(response=splitter.response(query, prompt), **fields))
        except ValidationError as exc:
            raise RequestIssues([(batch.field(field_path("items", i, *e["loc"])), e["msg"].removeprefix(
                "Value error, ")) for e in exc.errors()]) from None
    return batch


def answer(results: Sequence[Any]) -> OpenRLHFResponse:
    """``{"rewards", "scores", "extra_logs"}``: the composite reward twice (OpenRLHF reads ``rewards``
    for training and ``scores`` for dynamic filtering) and one list per reward component."""
    names: dict[str, None] = {}
    for r in results:
        names.update(dict.fromkeys(r.components))
    rewards = [r.reward for r in results]
    return OpenRLHFResponse(rewards=rewards, scores=rewards,
                            extra_logs={k: [r.components.get(k, 0.0) for r in results] for k in names})
