"""Tagged thought: parse a response into tagged sections, check it, render it.

A response is a sequence of ``<tag>...</tag>`` sections followed by exactly one
``<answer>...</answer>`` (docs/method.md section 2). The parser never raises: whatever the text, it
returns the sections it could read and the structural problems it met. The checker turns a
parse into the list of violated constraints, each with a reason, and the graded tag reward
(:attr:`Checked.score`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tagpr.config import TagsConfig, TaskType

# A tag token: ``<name>`` or ``</name>`` with a lowercase identifier. ``<3`` or ``a < b`` are text.
TAG_TOKEN = re.compile(r"<(/?)([a-z][a-z0-9_]*)>")

# Constraint names, in the order the checker reports them.
KNOWN_TAGS = "known_tags"
CLOSED = "closed"
NO_NESTING = "no_nesting"
NO_OUTSIDE_TEXT = "no_outside_text"
NO_EMPTY = "no_empty"
REQUIRED = "required"
ORDER = "order"
ANSWER_LAST_ONCE = "answer_last_once"
CONSTRAINTS = (KNOWN_TAGS, CLOSED, NO_NESTING, NO_OUTSIDE_TEXT, NO_EMPTY, REQUIRED, ORDER, ANSWER_LAST_ONCE)
# Violating any of these means the response does not parse (R_format = 0).
STRUCTURAL = frozenset({KNOWN_TAGS, CLOSED, NO_NESTING, NO_OUTSIDE_TEXT, ANSWER_LAST_ONCE})
# Each violation of these costs the graded tag score a penalty (structural ones zero the whole reward).
PENALIZED = (NO_EMPTY, ORDER)


@dataclass(frozen=True)
class Section:
    tag: str
    text: str


@dataclass(frozen=True)
class Violation:
    constraint: str
    reason: str


@dataclass(frozen=True)
class Parsed:
    """What the parser read: top-level sections in order, plus problems found on the way."""

    sections: tuple[Section, ...]
    unclosed: tuple[str, ...] = ()
    stray_closes: tuple[str, ...] = ()
    nested: tuple[tuple[str, str], ...] = ()
    outside_text: tuple[str, ...] = ()
    tag_names: tuple[str, ...] = field(default=())

    def texts(self, tag: str) -> list[str]:
        return [s.text for s in self.sections if s.tag == tag]


@dataclass(frozen=True)
class Checked:
    """A parse and its violations; ``covered`` of the ``required`` tags are present in order."""

    parsed: Parsed
    answer: str | None
    violations: tuple[Violation, ...]
    required: int = 0
    covered: int = 0
    penalty: float = 0.25

    @property
    def failed(self) -> frozenset[str]:
        return frozenset(v.constraint for v in self.violations)

    @property
    def parses(self) -> bool:
        """No structural violation and exactly one answer, last."""
        return not (self.failed & STRUCTURAL)

    @property
    def score(self) -> float:
        """R_tag in [0, 1]: the fraction of the task's required tags present and in order, less
        ``penalty`` per empty section or order violation; 0 for a response that does not parse.

        Graded so that RL can climb it one section at a time, and a bare answer earns nothing.
        """
        if not self.parses or not self.required:
            return 0.0
        penalties = sum(v.constraint in PENALIZED for v in self.violations)
        return max(0.0, self.covered / self.required - self.penalty * penalties)


def parse(text: str) -> Parsed:
    """Read top-level tagged sections; never raises."""
    sections: list[Section] = []
    unclosed: list[str] = []
    stray: list[str] = []
    nested: list[tuple[str, str]] = []
    outside: list[str] = []
    names: list[str] = []
    stack: list[tuple[str, int]] = []  # (tag, offset just after its opening token)
    last_end = 0

    def note_outside(chunk: str) -> None:
        if chunk.strip():
            outside.append(chunk.strip())

    for match in TAG_TOKEN.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        names.append(name)
        if not closing:
            if stack:
                nested.append((stack[-1][0], name))
            else:
                note_outside(text[last_end : match.start()])
            stack.append((name, match.end()))
            continue
        open_names = [t for t, _ in stack]
        if name not in open_names:
            stray.append(name)
            if not stack:
                note_outside(text[last_end : match.start()])
                last_end = match.end()
            continue
        while stack[-1][0] != name:
            unclosed.append(stack.pop()[0])
        tag, body_start = stack.pop()
        if not stack:
            sections.append(Section(tag, text[body_start : match.start()].strip()))
            last_end = match.end()
    if stack:
        unclosed.extend(t for t, _ in reversed(stack))
        # Text after an unclosed top-level tag belongs to it, not to the outside.
        last_end = len(text)
    note_outside(text[last_end:])
    return Parsed(tuple(sections), tuple(unclosed), tuple(stray), tuple(nested), tuple(outside), tuple(names))


def render(sections: Iterable[tuple[str, str]], answer: str | None = None, answer_tag: str = "answer") -> str:
    """The canonical tagged format: one section per line, the answer last."""
    parts = [f"<{tag}>{text}</{tag}>" for tag, text in sections]
    if answer is not None:
        parts.append(f"<{answer_tag}>{answer}</{answer_tag}>")
    return "\n".join(parts)


def _in_order(present: Sequence[str], order: Sequence[str]) -> int:
    """How many of ``order``'s tags appear in ``present`` in that relative order (the longest such
    subsequence, by first appearance)."""
    firsts = [present.index(t) for t in order if t in present]
    best: list[int] = []  # best[k]: smallest last position of an increasing run of length k + 1
    for pos in firsts:
        k = next((i for i, b in enumerate(best) if b >= pos), len(best))
        best[k:k + 1] = [pos]
    return len(best)


class TagSet:
    """The configured tag vocabulary and its constraints."""

    def __init__(self, cfg: TagsConfig):
        self.cfg = cfg
        self.primary: tuple[str, ...] = tuple(t.name for t in cfg.primary)
        self.descriptions: dict[str, str] = {t.name: t.description for t in cfg.primary}
        self.answer_tag = cfg.answer
        self.known = frozenset(self.primary) | {self.answer_tag}

    def tokens(self) -> frozenset[str]:
        """The opening and closing token of every known tag (text that is never a special token to strip)."""
        return frozenset(f"<{p}{t}>" for t in self.known for p in ("", "/"))

    def required(self, task_type: TaskType) -> list[str]:
        req = list(self.cfg.required.get("always", []))
        req += [t for t in self.cfg.required.get(task_type, []) if t not in req]
        return req

    def render(self, sections: Iterable[tuple[str, str]], answer: str | None) -> str:
        return render(sections, answer, self.answer_tag)

    def check(self, text: str, task_type: TaskType) -> Checked:
        parsed = parse(text)
        violations: list[Violation] = []
        add = lambda c, r: violations.append(Violation(c, r))

        for name in sorted(set(parsed.tag_names) - self.known):
            add(KNOWN_TAGS, f"unknown tag <{name}>")
        for name in parsed.unclosed:
            add(CLOSED, f"<{name}> is never closed")
        for name in parsed.stray_closes:
            add(CLOSED, f"</{name}> closes a tag that is not open")
        for outer, inner in parsed.nested:
            add(NO_NESTING, f"<{inner}> is nested inside <{outer}>")
        for chunk in parsed.outside_text:
            add(NO_OUTSIDE_TEXT, f"text outside any section: {chunk[:40]!r}")
        for s in parsed.sections:
            if not s.text:
                add(NO_EMPTY, f"<{s.tag}> is empty")

        present = [s.tag for s in parsed.sections]
        for tag in self.required(task_type):
            if tag not in present:
                add(REQUIRED, f"<{tag}> is required for {task_type} tasks")
        firsts = [present.index(t) for t in self.cfg.order if t in present]
        ordered = [t for t in self.cfg.order if t in present]
        for (a, ia), (b, ib) in zip(zip(ordered, firsts), zip(ordered[1:], firsts[1:])):
            if ib < ia:
                add(ORDER, f"<{a}> must come before <{b}>")

        answers = [i for i, s in enumerate(parsed.sections) if s.tag == self.answer_tag]
        if not answers:
            add(ANSWER_LAST_ONCE, f"no <{self.answer_tag}> section")
        elif len(answers) > 1:
            add(ANSWER_LAST_ONCE, f"{len(answers)} <{self.answer_tag}> sections, expected one")
        elif answers[0] != len(parsed.sections) - 1:
            add(ANSWER_LAST_ONCE, f"<{self.answer_tag}> is not the last section")
        answer = parsed.sections[answers[-1]].text if answers else None
        required = self.required(task_type)
        covered = (_in_order(present, [t for t in self.cfg.order if t in required])
                   + sum(t in present for t in required if t not in self.cfg.order))
        return Checked(parsed, answer, tuple(violations), len(required), covered, self.cfg.penalty)

    def distribution(self, texts: Sequence[str]) -> Counter[str]:
        """How often each primary tag appears as a section across responses."""
        counts: Counter[str] = Counter({t: 0 for t in self.primary})
        for text in texts:
            counts.update(s.tag for s in parse(text).sections if s.tag in self.descriptions)
        return counts
