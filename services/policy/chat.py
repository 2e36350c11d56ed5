"""The policy service's OpenAI-compatible edge, without Ray: a chat request turned into the TagPR
question it asks (whose profile, which task, what input), and a policy response turned into the
chat completion a client reads, whole or as server-sent events.

Personalization rides on OpenAI's own ``user`` field, which names a user whose profile the
service holds (:class:`tagpr.answering.ProfileStore`), or on the extension field ``tagpr``
(``{"task", "profile"}``, sent by the ``openai`` client as ``extra_body``). The client's own
system message is not used: the policy answers the prompt it was trained on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from services.edge import FieldValue, RequestIssues, Text
from services.policy.backends import Piece
from tagpr.answering import Answer, AnswerStream, ProfileStore
from tagpr.config import TaskName
from tagpr.lamp.io import Prompt
from tagpr.lamp.tasks import get_task
from tagpr.tags import TagSet


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id, ...: accepted, not used

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class TagPRFields(BaseModel):
    """The extension field ``tagpr``: what OpenAI's schema has no place for."""

    model_config = ConfigDict(extra="forbid")

    task: Optional[TaskName] = Field(None, description="the LaMP task (default: the stored user's)")
    profile: Optional[list[dict[Text, FieldValue]]] = Field(
        None, description="the user's profile items in LaMP's shape; stored under `user` when both are given")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request, with the fields the policy service reads; other OpenAI
    fields are accepted and ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    user: Optional[Text] = Field(None, min_length=1, max_length=256, description="whose profile to answer with")
    stream: bool = False
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy, as evaluation decodes")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    tagpr: Optional[TagPRFields] = None

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def question_of(req: ChatCompletionRequest, store: ProfileStore) -> Prompt:
    """The TagPR question a chat asks: the last user message is the LaMP input, and the user is
    OpenAI's ``user`` field or the ``tagpr`` extension's profile (:func:`resolve`)."""
    users = [m for m in req.messages if m.role == "user"]
    if not users or not users[-1].text().strip():
        raise RequestIssues([("messages", "needs a user message with the question (the LaMP input)")])
    ext = req.tagpr or TagPRFields()
    return resolve(store, users[-1].text(), req.user, ext.task, ext.profile,
                   fields=("user", "tagpr.task", "tagpr.profile"))


def resolve(store: ProfileStore, input_text: str, user: Optional[str], task: Optional[str],
            profile: Optional[list[dict[str, Any]]], fields: tuple[str, str, str]) -> Prompt:
    """A question for ``user``: a profile sent with the request wins (and is stored under the user
    for later requests), else the stored user's; the task is the request's, else the stored
    user's. Raises :class:`RequestIssues` naming the request's field (``fields``: user, task, profile)."""
    user_field, task_field, profile_field = fields
    stored = store.get(user) if user else None
    if profile is None and stored is None:
        send = f"send {profile_field} and {task_field}"
        raise RequestIssues([(user_field, f"unknown user {user!r}: {send} once" if user
                          else f"name a user whose profile the service holds, or {send}")])
    task = task or (stored.task if stored else None)
    if task is None:
        raise RequestIssues([(task_field, f"required with {profile_field}")])
    t = get_task(task)
    if profile is not None:
        missing = [(f"{profile_field}[{j}].{f}", f"missing (required for {t.name})")
                   for j, p in enumerate(profile) for f in t.profile_fields if p.get(f) is None]
        if missing:
            raise RequestIssues(missing)
        if user:
            store.put(user, t.name, profile)
        items = tuple(profile)
    else:
        items = stored.profile
    return Prompt(user or "request", t.name, input_text, items, user_id=user)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(answer: Answer, model: str, prompt_tokens: int, completion_tokens: int, finish_reason: str,
               cid: str | None = None) -> dict[str, Any]:
    """The whole answer as OpenAI's ``chat.completion``: the answer as ``content``, the tagged
    reasoning as ``reasoning_content`` (as vLLM's reasoning parsers return it)."""
    return {
        "id": cid or completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                     "message": {"role": "assistant", "content": answer.content,
                                 "reasoning_content": answer.reasoning}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


async def events(pieces: AsyncIterator[Piece], tags: TagSet, model: str, cid: str | None = None) -> AsyncIterator[str]:
    """Server-sent events of ``chat.completion.chunk`` as the response's pieces arrive: the role
    first, then ``{"reasoning_content": ...}`` and ``{"content": ...}`` deltas
    (:class:`tagpr.answering.AnswerStream`), the finish reason, then ``[DONE]``."""
    cid, created = cid or completion_id(), int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant"})
    split, finish = AnswerStream(tags), None
    async for piece in pieces:
        for delta in split.feed(piece.text):
            yield chunk(delta)
        finish = piece.finish_reason or finish
    for delta in split.close():
        yield chunk(delta)
    yield chunk({}, finish or "stop")
    yield "data: [DONE]\n\n"
