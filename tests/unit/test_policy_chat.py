"""The policy service's OpenAI-compatible edge without Ray: chat requests to TagPR questions, and
answers to chat completions and server-sent events."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from services.edge import RequestIssues
from services.policy.backends import BackendError, Piece, event_body
from services.policy.chat import ChatCompletionRequest, completion, events, question_of
from tagpr.answering import Answer, ProfileStore, UserProfile

PROFILE = [{"id": "1", "description": "A starship crew.", "tag": "sci-fi"}]
INPUT = "Which tag does this movie relate to? description: alien contact"


def store() -> ProfileStore:
    return ProfileStore({"u1": UserProfile("LaMP_2", tuple(PROFILE))})


def chat(**kw) -> ChatCompletionRequest:
    body = {"model": "tagpr", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": INPUT}], **kw}
    return ChatCompletionRequest.model_validate(body)


def test_a_known_user_is_answered_with_their_stored_profile_and_task():
    q = question_of(chat(user="u1"), store())
    assert (q.task, q.input, q.profile, q.user_id) == ("LaMP_2", INPUT, tuple(PROFILE), "u1")


def test_an_inline_profile_wins_and_is_stored_under_the_user():
    s = store()
    other = [{"description": "A tearful wedding.", "tag": "romance"}]
    q = question_of(chat(user="u2", tagpr={"task": "LaMP_2", "profile": other}), s)
    assert q.profile == tuple(other) and s.get("u2").profile == tuple(other)
    assert question_of(chat(user="u2"), s).profile == tuple(other)  # the next request names the user only


def test_the_last_user_message_is_the_input_and_content_parts_are_text():
    req = chat(messages=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": "second"}], "name": "ignored"}],
               user="u1", stream_options={"include_usage": True})  # OpenAI fields the service does not use
    assert question_of(req, store()).input == "second"


@pytest.mark.parametrize("kw, field, reason", [
    ({"user": "ghost"}, "user", "unknown user 'ghost'"),
    ({}, "user", "name a user"),
    ({"tagpr": {"profile": PROFILE}}, "tagpr.task", "required"),
    ({"tagpr": {"task": "LaMP_2", "profile": [{"tag": "sci-fi"}]}}, "tagpr.profile[0].description", "missing"),
    ({"user": "u1", "messages": [{"role": "system", "content": "only a system message"}]}, "messages", "user message"),
])
def test_requests_that_cannot_be_answered_name_the_field(kw, field, reason):
    with pytest.raises(RequestIssues) as err:
        question_of(chat(**kw), store())
    assert err.value.issues[0][0] == field and reason in err.value.issues[0][1]


@pytest.mark.parametrize("kw, loc", [
    ({"messages": []}, ("messages",)),
    ({"n": 2}, ("n",)),
    ({"temperature": 3}, ("temperature",)),
    ({"tagpr": {"task": "LaMP_9"}}, ("tagpr", "task")),
    ({"tagpr": {"colour": 1}}, ("tagpr", "colour")),
    ({"user": "a\ud800"}, ("user",)),
])
def test_schema_violations_are_located(kw, loc):
    with pytest.raises(ValidationError) as err:
        chat(**kw)
    assert err.value.errors()[0]["loc"][: len(loc)] == loc


def test_a_completion_carries_the_answer_and_the_reasoning_apart(tagset):
    answer = Answer.of("<examine_examples>Past films are sci-fi.</examine_examples><answer>sci-fi</answer>",
                       tagset, "LaMP_2")
    out = completion(answer, "tagpr", 40, 12, "stop")
    assert out["object"] == "chat.completion" and out["usage"]["total_tokens"] == 52
    message = out["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "sci-fi",
                       "reasoning_content": "<examine_examples>Past films are sci-fi.</examine_examples>"}


def test_events_are_openai_chunks_ending_in_done(tagset):
    async def pieces():
        for text in ("<examine_examples>x</examine_", "examples> <ans", "wer>sci-", "fi</answer>"):
            yield Piece(text)
        yield Piece("", "length", 40, 12)

    async def collect():
        return [line async for line in events(pieces(), tagset, "tagpr")]

    lines = asyncio.run(collect())
    assert lines[-1] == "data: [DONE]\n\n" and all(x.startswith("data: ") and x.endswith("\n\n") for x in lines)
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{"role": "assistant"}, {"reasoning_content": "<examine_examples>x</examine_"},
                      {"reasoning_content": "examples>"}, {"content": "sci-"}, {"content": "fi"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]


def test_the_llm_servers_events_are_read_and_its_errors_raised():
    chunk = {"choices": [{"index": 0, "text": "sci", "finish_reason": None}]}
    assert event_body(f"data: {json.dumps(chunk)}\n\n") == chunk
    assert event_body("data: [DONE]\n\n") is None
    with pytest.raises(BackendError) as refused:
        event_body('data: {"error": {"message": "prompt is longer than the context", "code": 400}}\n\n')
    assert refused.value.status == 400 and "context" in refused.value.message

    from ray.serve.llm.openai_api_models import ChatCompletionResponse, ErrorResponse

    whole = ChatCompletionResponse(model="m", choices=[{"index": 0, "finish_reason": "stop",
                                                        "message": {"role": "assistant", "content": "sci-fi"}}],
                                   usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    body = event_body(whole)  # a request not streamed: the response as one object
    assert body["choices"][0]["message"]["content"] == "sci-fi" and body["usage"]["completion_tokens"] == 2
    with pytest.raises(BackendError) as dead:  # an error sent as an object instead of text
        event_body(ErrorResponse(error={"message": "engine dead", "type": "InternalServerError", "code": 503}))
    assert dead.value.status == 503 and dead.value.message == "engine dead"
