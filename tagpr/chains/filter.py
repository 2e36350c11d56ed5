"""Keep chains whose answer scores well and whose tags satisfy every constraint; drop duplicates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from tagpr.lamp.metrics import sample_score
from tagpr.lamp.tasks import get_task
from tagpr.tags import TagSet


@dataclass
class FilterStats:
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class ChainFilter:
    #: Raised when the rules change, so chain sets an older filter wrote are made again (2: duplicates
    #: are per question; before, identical text for different questions was dropped).
    VERSION = 2

    def __init__(self, tags: TagSet, min_score: Mapping[str, float], generation_metric: str = "rougeL"):
        self.tags, self.min_score, self.metric = tags, dict(min_score), generation_metric
        self.seen: set[str] = set()
        self.stats = FilterStats()

    @staticmethod
    def key(question_id: str, task: str, response: str) -> str:
        """What makes two chains duplicates: the same text for the same question. Different questions
        may share a chain's text (a templated rating chain with the same numbers); each is a training
        example of its own."""
        return f"{task}/{question_id}\t{' '.join(response.split())}"

    def reason(self, question_id: str, task: str, response: str, gold: str) -> str | None:
        """Why a chain is dropped, or None to keep it (and remember it for de-duplication)."""
        t = get_task(task)
        checked = self.tags.check(response, t.task_type)
        if not checked.parses or not t.in_answer_space(checked.answer):
            return "unparsed"
        if checked.violations:
            return f"tag: {sorted(checked.failed)[0]}"
        if sample_score(t, checked.answer, gold, self.metric) < self.min_score[t.task_type]:
            return "low score"
        key = self.key(question_id, task, response)
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None

    def keep(self, records: Iterable[dict]) -> list[dict]:
        kept = []
        for r in records:
            why = self.reason(r["id"], r["task"], r["response"], r["gold"])
            if why is None:
                kept.append(r)
                self.stats.kept += 1
            else:
                self.stats.dropped[why] += 1
        return kept
