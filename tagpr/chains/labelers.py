"""Labelers turn free reasoning into tagged thought: split into steps, tag each, merge runs.

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
    def label(self, items: Sequence[tuple[str, str]]) -> list[str]:
        """(reasoning, answer) pairs -> tagged responses."""
        raise NotImplementedError


LABELERS: Registry[type[Labeler]] = Registry("labeler")


@LABELERS.register("embedding")
class EmbeddingLabeler(Labeler):
    def __init__(self, tags: TagSet, encoder: SentenceEncoder, lead_words: int = 8):
        self.tags, self.encoder, self.lead_words = tags, encoder, lead_words
        self.names = list(tags.primary)
        self.tag_vecs = encoder.encode([tags.descriptions[t] for t in self.names])

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
