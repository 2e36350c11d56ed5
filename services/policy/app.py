"""The policy service as a Ray Serve application: the trained policy answering users.

``PolicyIngress`` is the FastAPI app: OpenAI's ``/v1/chat/completions`` (whole or streamed as
server-sent events) and ``/v1/models``, the typed ``/v1/answer``, health checks and metrics. It
resolves whose profile a request means (:class:`tagpr.answering.ProfileStore`: LaMP files given at
start, and profiles requests send, kept beyond the replica by :mod:`services.policy.profiles`),
asks the backend (:mod:`services.policy.backends`: Ray Serve's ``LLMServer``, or ``PolicyServer``
below) for the response, and splits it into the answer and its tagged reasoning, as it arrives
when streaming. The HTTP edge (errors, limits, token, metrics) is :mod:`services.edge`.

``PolicyServer`` is the ``adapter`` backend: a generation engine over the policy folder through
the project's engine adapter (:func:`tagpr.engines.make_engine`); concurrent requests are merged
by ``@serve.batch`` into one generate call per sampling setting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Optional

import ray
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from ray import serve

from services import edge, swap
from services.edge import ERRORS, ClientError, ErrorResponse
from services.policy.backends import BACKENDS, BackendError, Piece
from services.policy.chat import ChatCompletionRequest, completion, events, question_of, resolve
from services.policy.schemas import AnswerRequest, AnswerResponse, Section
from tagpr.answering import Answer, ProfileStore
from tagpr.config import TagPRConfig
from tagpr.engines.base import Sampling
from tagpr.lamp.io import Prompt
from tagpr.tags import TagSet

log = logging.getLogger("tagpr.policy")
RETRY_AFTER = "1"  # seconds: a replica restarting or loading the policy


def refusal(exc: Exception) -> Exception:
    """The engines raise ``ValueError`` for input they cannot take (a prompt over the context):
    the request's fault, a 4xx; anything else stays the server's."""
    return BackendError(400, str(exc)) if isinstance(exc, ValueError) else exc


@serve.deployment(name="PolicyServer")
class PolicyServer:
    def __init__(self, registry: str, config: dict[str, Any], poll_s: float = 1.0):
        self.cfg = TagPRConfig.model_validate(config)
        self.tags = TagSet(self.cfg.tags)
        self.engine, self.policy = None, ""
        self._engine_lock = threading.Lock()  # held by a generate call; a swap waits for it
        self.load(ray.get(ray.get_actor(registry).get.remote()))
        self._watch = asyncio.get_event_loop().create_task(
            swap.follow(registry, lambda: self.policy, self.load, "policy", poll_s))

    def load(self, policy: str) -> None:
        """A new policy's engine, built beside the serving one and switched in between two generate
        calls; the old engine is closed then (on a GPU, both must fit while the new one loads)."""
        from tagpr.engines import make_engine

        engine = make_engine(self.cfg.rollout.engine, policy, self.cfg.model.dtype)
        with self._engine_lock:
            old, self.engine, self.policy = self.engine, engine, policy
        if old is not None:
            old.close()
        log.info("policy %s loaded (%s engine)", policy, self.cfg.rollout.engine.kind)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.generate_batch.set_max_batch_size(int(user_config.get("max_batch_size", 16)))
        self.generate_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.02)))

    def _run(self, requests: list[tuple[Prompt, Sampling]]) -> list[Piece]:
        with self._engine_lock:
            return self._generate(requests)

    def _generate(self, requests: list[tuple[Prompt, Sampling]]) -> list[Piece]:
        """One generate call per sampling setting among the batch's requests, in request order."""
        from tagpr.sft.data import prompt_text

        texts = [prompt_text(self.engine.tokenizer, self.tags, q.task, q.input, q.profile,
                             self.cfg.data.prompt_profile_items) for q, _ in requests]
        out: list[Optional[Piece]] = [None] * len(requests)
        for sampling in dict.fromkeys(s for _, s in requests):
            idx = [i for i, (_, s) in enumerate(requests) if s == sampling]
            for i, g in zip(idx, self.engine.generate([texts[i] for i in idx], sampling)):
                c = g.completions[0]
                out[i] = Piece(c.text, c.finish_reason, len(g.prompt_token_ids), len(c.token_ids))
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[tuple[Prompt, Sampling]]) -> list[Piece | Exception]:
        """A batch that fails is run again one request at a time, so that one bad request (a prompt
        over the engine's context) fails alone and not its neighbours."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._run, requests)
        except Exception as exc:
            if len(requests) == 1:
                return [refusal(exc)]
            log.warning("a batch of %d requests failed; generating them one by one", len(requests))
        return [await self._alone(r) for r in requests]

    async def _alone(self, request: tuple[Prompt, Sampling]) -> Piece | Exception:
        try:
            return (await asyncio.get_running_loop().run_in_executor(None, self._run, [request]))[0]
        except Exception as exc:  # handed to this request's caller only
            return refusal(exc)

    async def generate(self, question: Prompt, sampling: Sampling) -> Piece:
        out = await self.generate_batch((question, sampling))
        if isinstance(out, Exception):
            raise out
        return out

    def info(self) -> dict[str, Any]:
        return {"policy": self.policy, "engine": self.cfg.rollout.engine.kind}


app = FastAPI(
    title="TagPR policy service",
    description="The trained TagPR policy answering users: OpenAI-compatible chat completions personalized by "
    "OpenAI's `user` field (a user whose profile the service holds) or the `tagpr` extension field (`task`, "
    "`profile`), and the typed `/v1/answer`. With a token, send `Authorization: Bearer <token>` (or the token as "
    "the password of HTTP Basic).",
    version="1",
)
edge.install(app, "policy")


@serve.deployment(name="PolicyIngress")
@serve.ingress(app)
class PolicyIngress:
    def __init__(self, server, config: dict[str, Any], sent_profiles: str, token_sha256: Optional[str] = None,
                 profiles: Optional[str] = None):
        self.cfg = TagPRConfig.model_validate(config)
        self.svc = self.cfg.policy_service
        self.backend = BACKENDS.get(self.svc.backend)(server, self.cfg)
        self.tags = TagSet(self.cfg.tags)
        self.store = ProfileStore.from_lamp(profiles, self.cfg.data.tasks) if profiles else ProfileStore()
        self.sent = ray.get_actor(sent_profiles)  # services.policy.profiles.SentProfiles
        for user, p in ray.get(self.sent.all.remote()):
            self.store.put(user, p.task, p.profile)
        self.model = self.svc.model_name
        self.max_tokens = self.svc.max_tokens or self.cfg.rollout.max_tokens
        self.edge = edge.Edge(token_sha256, self.svc.limits.max_body_bytes, edge.IngressMetrics("policy"))
        edge.register("policy", self.edge)

    # ------------------------------------------------------------ answering

    async def _question(self, user: Optional[str], sends_profile: bool, build: Callable[[], Prompt]) -> Prompt:
        """The question ``build`` reads from the request (:func:`services.policy.chat.resolve`), with
        the application's sent profiles behind this replica's store: a user this replica does not
        hold is looked up there first, and a profile the request sends for a user is written there."""
        if user and self.store.get(user) is None:
            try:
                found = await self.sent.get.remote(user)
            except Exception:
                log.exception("sent profiles unavailable; answering from this replica's")
                found = None
            if found is not None:
                self.store.put(user, found.task, found.profile)
        q = build()
        if user and sends_profile:
            try:
                await self.sent.put.remote(user, q.task, list(q.profile))
            except Exception:
                log.exception("sent profiles unavailable; user %r is kept by this replica only", user)
        return q

    def _check(self, q: Prompt, fields: tuple[str, str]) -> None:
        """413 for an input or profile over ``policy_service.limits`` (``fields``: input, profile)."""
        input_field, profile_field = fields
        issues = edge.size_issues(self.svc.limits, {input_field: q.input}, q.profile, profile_field)
        if issues:
            raise ClientError(413, "payload too large", issues)

    def _sampling(self, temperature: float, top_p: float, max_tokens: Optional[int]) -> Sampling:
        return Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens or self.max_tokens,
                        stop=tuple(self.cfg.rollout.stop), logprobs=False)

    @staticmethod
    def _failure(exc: Exception, input_field: str) -> ClientError:
        """What a client hears of a failed generation: a refusal by the engine (e.g. a prompt over its
        context) is a 4xx naming ``input_field``; an engine error or a replica that is restarting or
        overloaded is a 503 to retry."""
        if isinstance(exc, BackendError) and 400 <= exc.status < 500:
            return ClientError(exc.status, "request refused by the engine", [(input_field, exc.message)])
        log.warning("policy generation failed: %s", exc)
        return ClientError(503, "policy server unavailable", headers={"Retry-After": RETRY_AFTER})

    async def _pieces(self, q: Prompt, sampling: Sampling, input_field: str, stream: bool) -> AsyncIterator[Piece]:
        """The backend's pieces of the response, the first one awaited before this returns, so that
        a failure to start is an HTTP error (:meth:`_failure`), not a stream that breaks after its 200.
        Not ``stream``: the backend may send the response whole, which costs less than its pieces."""
        pieces = self.backend.pieces(q, sampling, stream)
        try:
            first = await anext(pieces)
        except Exception as exc:
            raise self._failure(exc, input_field) from None

        async def rest() -> AsyncIterator[Piece]:
            yield first
            async for piece in pieces:
                yield piece

        return rest()

    async def _whole(self, q: Prompt, sampling: Sampling, input_field: str) -> Piece:
        """The whole response of a request that is not streamed."""
        texts, last = [], Piece("")
        try:
            async for last in await self._pieces(q, sampling, input_field, stream=False):
                texts.append(last.text)
        except ClientError:
            raise
        except Exception as exc:
            raise self._failure(exc, input_field) from None
        return Piece("".join(texts), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    def _known_model(self, model: str) -> None:
        if model != self.model:
            raise ClientError(404, "model not found", [("model", f"this service serves {self.model!r}")])

    # ------------------------------------------------------------ routes

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> dict:
        try:
            info = await asyncio.wait_for(self.backend.info(), timeout=5)
        except Exception:
            raise ClientError(503, "policy not loaded", headers={"Retry-After": RETRY_AFTER}) from None
        return {"status": "ready", **info}

    @app.get("/v1/models", responses=ERRORS)
    async def models(self) -> dict:
        """OpenAI's model list: the one policy this service serves."""
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": int(time.time()),
                                            "owned_by": "tagpr"}]}

    @app.get("/metrics", responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus exposition"},
        401: {"model": ErrorResponse}})
    async def metrics(self) -> Response:
        """This ingress replica's ``tagpr_ingress_requests_total{route,code}`` and
        ``tagpr_ingress_latency_seconds{route}`` in Prometheus' text format."""
        return PlainTextResponse(self.edge.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat(self, req: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI's chat completion for the user named by ``user`` (or the ``tagpr`` extension's
        profile): the answer as ``content``, the tagged reasoning as ``reasoning_content``;
        ``stream: true`` sends them as server-sent events."""
        self._known_model(req.model)
        sends = req.tagpr is not None and req.tagpr.profile is not None
        q = await self._question(req.user, sends, lambda: question_of(req, self.store))  # 422 naming the field
        self._check(q, ("messages", "tagpr.profile"))
        request.state.items = 1
        sampling = self._sampling(req.temperature, req.top_p, req.token_limit(self.max_tokens))
        if req.stream:
            pieces = await self._pieces(q, sampling, "messages", stream=True)
            return StreamingResponse(events(pieces, self.tags, self.model), media_type="text/event-stream")
        reply = await self._whole(q, sampling, "messages")
        answer = Answer.of(reply.text, self.tags, q.task)
        return completion(answer, self.model, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason)

    @app.post("/v1/answer", response_model=AnswerResponse, responses=ERRORS)
    async def answer(self, req: AnswerRequest, request: Request) -> AnswerResponse:
        """The TagPR answer for a user: the answer, the tagged reasoning, its sections and whether
        the format holds."""
        q = await self._question(req.user_id, req.profile is not None, lambda: resolve(
            self.store, req.input, req.user_id, req.task, req.profile, fields=("user_id", "task", "profile")))
        self._check(q, ("input", "profile"))
        request.state.items = 1
        reply = await self._whole(q, self._sampling(req.temperature, 1.0, req.max_tokens), "input")
        a = Answer.of(reply.text, self.tags, q.task)
        return AnswerResponse(answer=a.content, reasoning=a.reasoning, format_valid=a.format_valid, task=q.task,
                              sections=[Section(tag=t, text=x) for t, x in a.sections], model=self.model,
                              finish_reason=reply.finish_reason)

