"""The LaMP task registry: input templates, profile fields, answer spaces, metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tagpr.config import TaskType
from tagpr.registry import Registry

LAMP2_LABELS = (
    "sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy",
    "classic", "psychology", "fantasy", "romance", "thought-provoking", "social commentary",
    "violence", "true story",
)


@dataclass(frozen=True)
class LampTask:
    name: str
    title: str
    task_type: TaskType
    # Profile item fields (besides ``id`` and ``date``); the last one is the item's "label".
    profile_fields: tuple[str, ...]
    # The field holding what the user produced for that item (label, score, title, or text).
    profile_output: str
    input_template: str
    metrics: tuple[str, ...]
    primary_metric: str
    higher_is_better: bool
    labels: tuple[str, ...] | None = None

    @property
    def number(self) -> int:
        return int(self.name.split("_")[1])

    def in_answer_space(self, answer: str | None) -> bool:
        if answer is None:
            return False
        answer = answer.strip()
        if self.labels is not None:
            return answer in self.labels
        if self.task_type == "rating":
            return parse_rating(answer) is not None
        return bool(answer)

    def profile_item_parts(self, item: dict[str, Any]) -> tuple[str, str]:
        """(what the user produced, e.g. ``tag: comedy``; the rest of the item, e.g. its description)."""
        label = f"{self.profile_output}: {item.get(self.profile_output, '')}"
        rest = " | ".join(f"{f}: {item.get(f, '')}" for f in self.profile_fields if f != self.profile_output)
        return label, rest

    def profile_item_text(self, item: dict[str, Any]) -> str:
        """One line per profile item, label first: what prompts show of it."""
        return " | ".join(x for x in self.profile_item_parts(item) if x)

    def output_text(self, output: str) -> str:
        """An answer written like a profile item's label, so the two embed alike."""
        return f"{self.profile_output}: {output}"


def parse_rating(text: str) -> float | None:
    """A LaMP-3 answer as a number in [1, 5]; None when it is not one."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and 1.0 <= value <= 5.0 else None


TASKS: Registry[LampTask] = Registry("LaMP task")

_CLS = ("accuracy", "f1")
_GEN = ("rouge-1", "rouge-L")
for _task in (
    LampTask(
        "LaMP_1", "Personalized citation identification", "classification", ("title", "abstract"), "title",
        'For an author who has written the paper with the title "{title}", which reference is related? '
        'Just answer with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"',
        _CLS, "accuracy", True, ("[1]", "[2]"),
    ),
    LampTask(
        "LaMP_2", "Personalized movie tagging", "classification", ("description", "tag"), "tag",
        "Which tag does this movie relate to among the following tags? Just answer with the tag name "
        "without further explanation. tags: [" + ", ".join(LAMP2_LABELS) + "] description: {description}",
        _CLS, "accuracy", True, LAMP2_LABELS,
    ),
    LampTask(
        "LaMP_3", "Personalized product rating", "rating", ("text", "score"), "score",
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 "
        "without further explanation. review: {review}",
        ("mae", "rmse"), "mae", False,
    ),
    LampTask(
        "LaMP_4", "Personalized news headline generation", "generation", ("text", "title"), "title",
        "Generate a headline for the following article: {article}", _GEN, "rouge-1", True,
    ),
    LampTask(
        "LaMP_5", "Personalized scholarly title generation", "generation", ("abstract", "title"), "title",
        "Generate a title for the following abstract of a paper: {abstract}", _GEN, "rouge-1", True,
    ),
    LampTask(
        "LaMP_6", "Personalized email subject generation", "generation", ("text", "title"), "title",
        "Generate a subject for the following email: {email}", _GEN, "rouge-1", True,
    ),
    LampTask(
        "LaMP_7", "Personalized tweet paraphrasing", "generation", ("text",), "text",
        "Paraphrase the following tweet without any explanation before or after it: {tweet}",
        _GEN, "rouge-1", True,
    ),
):
    TASKS.add(_task.name, _task)


def get_task(name: str) -> LampTask:
    """Look up a task by ``LaMP_k`` (``LaMP-k`` is accepted too)."""
    return TASKS.get(name.replace("-", "_"))
