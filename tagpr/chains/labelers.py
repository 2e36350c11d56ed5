"""Labelers turn free reasoning into tagged thought: split into steps, tag each, merge runs.

``llm``: the chain job's chat teacher (``openai`` or ``vllm``) is asked to name one tag per
numbered step; a reply that does not tag every step with a known tag is counted and dropped.

``embedding`` (offline): each step gets the tag whose description is nearest in sentence-
embedding space (the packaged MiniLM by default). Only the step's lead (up to its first comma or
colon, at most ``lead_words`` words) is embedded: the lead carries what the step *does*
("Looking through the profile", "Weighing the candidates"); the rest is content that would pull
every step toward whatever it quotes.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from tagpr.prmu.encoder import SentenceEncoder
from tagpr.registry import Registry
from tagpr.tags import TagSet

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def split_steps(reasoning: str) -> list[str]:
    """One step per line when the reasoning has several lines, else one per sentence."""
    lines = [line.strip() for line in reasoning.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines
    return [s.strip() for s in _SENTENCE_END.split(reasoning) if s.strip()]


def lead(step: str, max_words: int = 8) -> str:
    head = re.split(r"[,:;]", step, maxsplit=1)[0]
    return " ".join(head.split()[:max_words])


def merge_runs(tagged: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive steps with the same tag become one section."""
    out: list[tuple[str, str]] = []
    for tag, text in tagged:
        if out and out[-1][0] == tag:
            out[-1] = (tag, f"{out[-1][1]} {text}")
        else:
            out.append((tag, text))
    return out


class Labeler:
    @classmethod
    def from_config(cls, cfg, teacher) -> "Labeler":
        raise NotImplementedError

    def label(self, items: Sequence[tuple[str, str]]) -> list[str | None]:
        """(reasoning, answer) pairs -> tagged responses (None: this one could not be labeled)."""
        raise NotImplementedError


LABELERS: Registry[type[Labeler]] = Registry("labeler")


@LABELERS.register("embedding")
class EmbeddingLabeler(Labeler):
    def __init__(self, tags: TagSet, encoder: SentenceEncoder, lead_words: int = 8):
        self.tags, self.encoder, self.lead_words = tags, encoder, lead_words
        self.names = list(tags.primary)
        self.tag_vecs = encoder.encode([tags.descriptions[t] for t in self.names])

    @classmethod
    def from_config(cls, cfg, teacher) -> "EmbeddingLabeler":
        return cls(TagSet(cfg.tags), SentenceEncoder(cfg.prmu.encoder, cfg.prmu.max_length,
                                                     allow_hub=cfg.model.allow_hub))

    def label(self, items):
        steps = [split_steps(r) for r, _ in items]
        flat = [s for ss in steps for s in ss]
        leads = [lead(s, self.lead_words) for s in flat]
        vecs = self.encoder.encode(leads) if flat else torch.zeros(0, self.encoder.dim)
        choice = (vecs @ self.tag_vecs.T).argmax(-1).tolist() if flat else []
        out, i = [], 0
        for ss, (_, answer) in zip(steps, items):
            tagged = [(self.names[choice[i + k]], s) for k, s in enumerate(ss)]
            i += len(ss)
            out.append(self.tags.render(merge_runs(tagged), answer))
        return out


_LABEL_LINE = re.compile(r"^\s*(\d+)\s*[:.)\-]\s*<?\s*([A-Za-z_]+)\s*>?\s*$")


@LABELERS.register("llm")
class LLMLabeler(Labeler):
    """Asks a chat teacher for one tag per numbered step, in one conversation per chain."""

    def __init__(self, tags: TagSet, teacher, max_tokens: int = 256):
        from tagpr.chains.teachers import ChatTeacher
        from tagpr.errors import TagPRError

        if not isinstance(teacher, ChatTeacher):
            raise TagPRError(f"the llm labeler needs a chat teacher (openai, vllm), not {teacher.name!r}")
        self.tags, self.teacher, self.max_tokens = tags, teacher, max_tokens
        listing = "\n".join(f"{t}: {tags.descriptions[t]}" for t in tags.primary)
        self.system = ("You label the steps of a reasoning chain about a user. Each step gets exactly one of "
                       f"these tags:\n{listing}\nReply with one line per step, in order, as "
                       "'<step number>: <tag>', and nothing else.")

    @classmethod
    def from_config(cls, cfg, teacher) -> "LLMLabeler":
        options = getattr(teacher, "options", None)
        return cls(TagSet(cfg.tags), teacher, getattr(options, "label_max_tokens", 256))

    def conversation(self, steps: Sequence[str]) -> list[dict[str, str]]:
        numbered = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(steps))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": f"Steps:\n{numbered}"}]

    def parse(self, reply: str, n_steps: int) -> list[str] | None:
        """Tags of steps 1..n from a reply, or None unless every step got exactly one known tag."""
        found: dict[int, str] = {}
        for line in reply.splitlines():
            m = _LABEL_LINE.match(line)
            if m and m.group(2) in self.tags.primary and int(m.group(1)) not in found:
                found[int(m.group(1))] = m.group(2)
        tags = [found.get(i + 1) for i in range(n_steps)]
        return None if None in tags else tags  # type: ignore[return-value]

    def label(self, items):
        steps = [split_steps(r) for r, _ in items]
        replies = self.teacher.chat([self.conversation(ss) for ss in steps], 1, self.max_tokens)
        out: list[str | None] = []
        for ss, (_, answer), reply in zip(steps, items, replies):
            tags = self.parse(reply.texts[0], len(ss)) if reply.texts and ss else None
            out.append(None if tags is None else self.tags.render(merge_runs(list(zip(tags, ss))), answer))
        return out
