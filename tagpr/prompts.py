"""The policy's prompt: what SFT trains on and what rollout workers send to vLLM.

One chat turn: a system message naming the tagged format, and a user message with the user's
profile items (label first, at most ``max_profile_items``) followed by the LaMP input.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tagpr.lamp.tasks import get_task
from tagpr.tags import TagSet


def system_message(tags: TagSet, describe: bool = False) -> str:
    if describe:
        lines = [f"<{t}>: {tags.descriptions[t]}" for t in tags.primary]
        body = "\n".join(lines)
    else:
        body = " ".join(f"<{t}>" for t in tags.primary)
    return (f"Reason about this user in tagged sections, then give the answer once in "
            f"<{tags.answer_tag}>...</{tags.answer_tag}>.\nTags: {body}")


def user_message(task: str, input_text: str, profile: Sequence[Mapping[str, Any]], max_items: int) -> str:
    t = get_task(task)
    items = "\n".join(f"{i + 1}. {t.profile_item_text(dict(p))}" for i, p in enumerate(profile[:max_items]))
    return f"User history:\n{items}\n\n{input_text}"


def messages(tags: TagSet, task: str, input_text: str, profile: Sequence[Mapping[str, Any]], max_items: int = 8,
             describe_tags: bool = False) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_message(tags, describe_tags)},
            {"role": "user", "content": user_message(task, input_text, profile, max_items)}]
