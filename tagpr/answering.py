"""Answering a user with the trained policy, without Ray: whose profile a request means, and what
a response gives back (the tagged reasoning apart from the answer). The policy service builds on
these; the prompt itself is :func:`tagpr.sft.data.prompt_text`, the one training and evaluation use.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagpr.config import LAMP_TASKS
from tagpr.errors import DataError
from tagpr.lamp.io import iter_questions
from tagpr.lamp.tasks import get_task
from tagpr.rewards import format_valid
from tagpr.tags import TagSet


@dataclass(frozen=True)
class UserProfile:
    """A user's profile items (LaMP's shape) and the task they were collected for."""

    task: str
    profile: tuple[Mapping[str, Any], ...]


class ProfileStore:
    """Profiles by user id: read from LaMP question files (every question carries its user's
    profile; a question without ``user_id`` stands for a user of its own, named by its id), plus
    profiles sent at run time, kept up to ``capacity`` (least recently used go first; the files'
    users are never evicted)."""

    def __init__(self, users: Mapping[str, UserProfile] | None = None, capacity: int = 10_000):
        self.files: dict[str, UserProfile] = dict(users or {})
        self.sent: OrderedDict[str, UserProfile] = OrderedDict()
        self.capacity = capacity

    @classmethod
    def from_lamp(cls, root: str | os.PathLike[str], tasks: Iterable[str] = LAMP_TASKS,
                  capacity: int = 10_000) -> "ProfileStore":
        """Every ``root/LaMP_k/*_questions.json``. A user met twice keeps the longer profile (LaMP's
        questions of one user share it; a later split may hold more of it)."""
        users: dict[str, UserProfile] = {}
        for task in tasks:
            folder = Path(root) / task
            for path in sorted(folder.glob("*_questions.json")) if folder.is_dir() else ():
                for q in iter_questions(task, path):
                    key = q.user_id or q.id
                    if key not in users or len(q.profile) > len(users[key].profile):
                        users[key] = UserProfile(task, q.profile)
        if not users:
            raise DataError(str(root), f"no LaMP question files (LaMP_k/<split>_questions.json) for {list(tasks)}")
        return cls(users, capacity)

    def __len__(self) -> int:
        return len(self.files) + len(self.sent)

    def get(self, user_id: str) -> UserProfile | None:
        if user_id in self.sent:
            self.sent.move_to_end(user_id)
            return self.sent[user_id]
        return self.files.get(user_id)

    def put(self, user_id: str, task: str, profile: Sequence[Mapping[str, Any]]) -> None:
        """Remember a profile a request sent, for later requests naming the same user."""
        get_task(task)  # an unknown task is an error here, not when the user is asked for
        self.sent[user_id] = UserProfile(task, tuple(profile))
        self.sent.move_to_end(user_id)
        while len(self.sent) > self.capacity:
            self.sent.popitem(last=False)

    def sent_profiles(self) -> list[tuple[str, UserProfile]]:
        """The profiles requests sent, least recently used first: put in this order into another
        store, they are evicted there in the same order."""
        return list(self.sent.items())


@dataclass(frozen=True)
class Answer:
    """A policy response as the service returns it: the answer apart from the tagged reasoning
    before it (``reasoning_content`` / ``content`` in OpenAI's chat format, as vLLM's reasoning
    parsers split them), the sections read, and whether the format holds for the task."""

    content: str
    reasoning: str
    sections: tuple[tuple[str, str], ...]
    format_valid: bool

    @classmethod
    def of(cls, text: str, tags: TagSet, task: str) -> "Answer":
        """The answer is the ``<answer>`` section's text, as evaluation reads it (empty when there
        is none); the reasoning is everything before that section."""
        t = get_task(task)
        checked = tags.check(text, t.task_type)
        opening = f"<{tags.answer_tag}>"
        reasoning = text[: text.rfind(opening)] if checked.answer is not None else text
        return cls(content=checked.answer or "", reasoning=reasoning.strip(),
                   sections=tuple((s.tag, s.text) for s in checked.parsed.sections if s.tag != tags.answer_tag),
                   format_valid=bool(format_valid(checked, t)))


class AnswerStream:
    """A response arriving in pieces, split as it comes into ``reasoning_content`` and ``content``
    deltas: the reasoning is the text before the first ``<answer>``, the content the text inside it.

    Text that may still turn out to be part of a tag (``<ans``), and whitespace that may end a
    section, is held back until the next piece decides it, so for a response with one answer
    section at its end the joined deltas equal :meth:`Answer.of`'s ``reasoning`` and ``content``.
    A stream cannot take text back: for a malformed response (no answer, or one that is not last)
    it still splits at the first ``<answer>``, where :meth:`Answer.of` reads the whole text.
    """

    def __init__(self, tags: TagSet):
        self.opening, self.closing = f"<{tags.answer_tag}>", f"</{tags.answer_tag}>"
        self.field, self.pending, self.started = "reasoning_content", "", False

    def _emit(self, text: str) -> list[dict[str, str]]:
        text = text if self.started else text.lstrip()
        self.started = self.started or bool(text)
        return [{self.field: text}] if text else []

    def feed(self, text: str) -> list[dict[str, str]]:
        """The deltas ``text`` decides, in order."""
        if self.field == "":
            return []
        self.pending += text
        marker = self.opening if self.field == "reasoning_content" else self.closing
        at = self.pending.find(marker)
        if at >= 0:
            out, rest = self._emit(self.pending[:at].rstrip()), self.pending[at + len(marker):]
            self.pending, self.started = "", False
            self.field = "content" if self.field == "reasoning_content" else ""
            return out + self.feed(rest)
        keep = next((k for k in range(min(len(marker) - 1, len(self.pending)), 0, -1)
                     if marker.startswith(self.pending[-k:])), 0)
        settled = self.pending[: len(self.pending) - keep]
        decided = settled.rstrip()
        self.pending = self.pending[len(decided):]
        return self._emit(decided)

    def close(self) -> list[dict[str, str]]:
        """The deltas held back when the response ends."""
        out = self._emit(self.pending.rstrip()) if self.field else []
        self.pending, self.field = "", ""
        return out
