"""The reward service as a Ray Serve application.

Two deployments:

- ``PRMUScorer``: holds the PRMU and scores lists of judged responses; concurrent calls are
  merged by ``@serve.batch`` (batch size counted in items), and it autoscales on ongoing
  requests. A new checkpoint is swapped in without replacing a replica (:mod:`services.swap`):
  a batch already running finishes on the model it started with.
- ``RewardIngress``: the FastAPI app. It validates requests, parses tagged responses, computes
  the TagPR composite reward (``tagpr.rewards``) and asks the scorer for PRMU scores.

Client mistakes get 401, 413 or 422 with the field path and reason; a scorer that cannot answer
gives 503 with ``Retry-After``; nothing a client sends produces a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import ray
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from ray import serve

from services import edge, swap
from services.edge import ERRORS, ClientError, ErrorResponse, field_path
from services.reward import openrlhf
from services.reward.schemas import (
    ModelInfo,
    OpenRLHFRequest,
    OpenRLHFResponse,
    RewardRequest,
    RewardResponse,
    RewardValue,
    ScoreRequest,
    ScoreResponse,
)
from tagpr.config import TagPRConfig
from tagpr.lamp.io import Prompt
from tagpr.lamp.tasks import get_task
from tagpr.rewards import CompositeReward, FixedScores, Judged, RewardContext, RewardInput, gated, judge
from tagpr.tags import TagSet

log = logging.getLogger("tagpr.reward")

# ---------------------------------------------------------------- the scorer deployment


@dataclass(frozen=True)
class Scored:
    """Raw PRMU scores of one request, the checkpoint's version and its training-set statistics."""

    scores: list[float]
    version: str
    stats: tuple[float, float] | None


@serve.deployment(name="PRMUScorer")
class PRMUScorerDeployment:
    def __init__(self, registry: str, poll_s: float = 1.0):
        from services.reward.metrics import ScorerMetrics

        self.scorer = None
        self.checkpoint: Optional[str] = None
        self.allow_hub = False
        self.metrics = ScorerMetrics()
        self.load(ray.get(ray.get_actor(registry).get.remote()))
        self._watch = asyncio.get_event_loop().create_task(
            swap.follow(registry, lambda: self.checkpoint, self.load, "PRMU checkpoint", poll_s))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.score_batch.set_max_batch_size(int(user_config.get("max_batch_size", 32)))
        self.score_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.01)))
        self.allow_hub = bool(user_config.get("allow_hub", False))

    def load(self, checkpoint: str) -> None:
        from tagpr.prmu.scorer import PRMUScorer

        previous = self.scorer.version if self.scorer else None
        scorer = PRMUScorer.load(checkpoint, allow_hub=self.allow_hub)
        self.scorer, self.checkpoint = scorer, checkpoint  # one assignment: in-flight batches keep theirs
        self.metrics.model(scorer.version, previous)
        log.info("PRMU %s loaded from %s", scorer.version, checkpoint)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=lambda reqs: sum(len(r) for r in reqs))
    async def score_batch(self, requests: list[list[Any]]) -> list[Scored | Exception]:
        """One encoder pass over every request's items. If it fails, each request is scored alone,
        so a request the scorer cannot take fails by itself and not the others batched with it."""
        scorer = self.scorer
        loop = asyncio.get_running_loop()
        flat = [j for r in requests for j in r]  # judged responses; the checkpoint decides what it reads
        try:
            scores = await loop.run_in_executor(None, scorer.score, flat)
        except Exception:
            if len(requests) == 1:
                raise
            log.warning("a batch of %d requests failed; scoring them one by one", len(requests))
            return [await self._alone(scorer, r) for r in requests]
        self.metrics.batch(len(flat), scorer.version)
        out, i = [], 0
        for r in requests:
            out.append(Scored(scores[i : i + len(r)], scorer.version, scorer.score_stats))
            i += len(r)
        return out

    async def _alone(self, scorer: Any, judged: list[Any]) -> Scored | Exception:
        try:
            scores = await asyncio.get_running_loop().run_in_executor(None, scorer.score, judged)
        except Exception as exc:  # handed to this request's caller only
            return exc
        self.metrics.batch(len(judged), scorer.version)
        return Scored(scores, scorer.version, scorer.score_stats)

    async def score(self, judged: list[Any]) -> Scored:
        out = await self.score_batch(judged)
        if isinstance(out, Exception):
            raise out
        return out

    def info(self) -> dict[str, Any]:
        m = self.scorer.meta
        return {"version": m["version"], "variant": m["variant"], "encoder": m["encoder"],
                "created": m.get("created"), "config": m["config"], "metrics": m.get("metrics", {})}


# ---------------------------------------------------------------- the FastAPI ingress


app = FastAPI(
    title="TagPR reward service",
    description="PRMU scores and the TagPR composite reward over HTTP. When the service was started with a "
    "token, send it as `Authorization: Bearer <token>`, or as the password of HTTP Basic (any user name) for "
    "clients that can only put it in the URL (`http://tagpr:<token>@host:port/get_reward`).",
    version="1",
)

edge.install(app, "reward")


@serve.deployment(name="RewardIngress")
@serve.ingress(app)
class RewardIngress:
    def __init__(self, scorer, config: dict[str, Any], token_sha256: Optional[str] = None,
                 strip_tokens: tuple[str, ...] = openrlhf.COMMON_SPECIAL_TOKENS):
        self.scorer = scorer
        self.cfg = TagPRConfig.model_validate(config)
        self.limits = self.cfg.service.limits
        self.tags = TagSet(self.cfg.tags)
        self.queries = openrlhf.QuerySplitter(strip_tokens, keep=self.tags.tokens())
        self.stages = {s.name: s.weights for s in self.cfg.rl.stages}
        self.retry_after = str(math.ceil(self.cfg.service.retry_after_s))
        self.edge = edge.Edge(token_sha256, self.limits.max_body_bytes, edge.IngressMetrics("reward"))
        self.profiles: OrderedDict[str, list[dict]] = OrderedDict()  # user_id -> profile, per ingress replica
        edge.register("reward", self.edge)

    # ------------------------------------------------------------ input handling

    def _check_limits(self, items: list[Any], texts: tuple[str, ...]) -> None:
        lim = self.limits
        if len(items) > lim.max_batch_items:
            raise ClientError(413, "payload too large", [("items", f"{len(items)} items, limit {lim.max_batch_items}")])
        issues = [issue for i, item in enumerate(items) for issue in edge.size_issues(
            lim, {field_path("items", i, name): getattr(item, name, None) or "" for name in texts},
            item.profile or [], field_path("items", i, "profile"))]
        if issues:
            raise ClientError(413, "payload too large", issues)

    def _profile(self, item: Any, i: int, needed: bool) -> tuple[dict, ...]:
        task = get_task(item.task)
        if item.profile is not None:
            issues = []
            for j, p in enumerate(item.profile):
                for f in task.profile_fields:
                    if p.get(f) is None:
                        issues.append((field_path("items", i, "profile", j, f), f"missing (required for {task.name})"))
            if issues:
                raise ClientError(422, "invalid request", issues)
            if item.user_id:
                self._remember(item.user_id, item.profile)
            return tuple(item.profile)
        if item.user_id and item.user_id in self.profiles:
            self.profiles.move_to_end(item.user_id)
            return tuple(self.profiles[item.user_id])
        if needed and item.user_id:
            raise ClientError(422, "invalid request", [(field_path("items", i, "user_id"),
                                                        "unknown user: send its profile once")])
        if needed:
            raise ClientError(422, "invalid request", [(field_path("items", i, "profile"),
                                                        "required: the stage weights the PRMU, which reads the user's "
                                                        "profile (or a user_id whose profile was sent before)")])
        return ()

    def _input(self, item: Any, i: int, needs_profile: bool) -> RewardInput:
        """An item of a request as the reward reads it; items carry no id, so their index in the batch is one."""
        prompt = Prompt(str(i), item.task, item.input, self._profile(item, i, needs_profile),
                        getattr(item, "gold", None), item.user_id)
        return RewardInput(prompt, item.response)

    def _remember(self, user_id: str, profile: list[dict]) -> None:
        self.profiles[user_id] = profile
        self.profiles.move_to_end(user_id)
        while len(self.profiles) > self.cfg.prmu.embedding_cache:
            self.profiles.popitem(last=False)

    async def _prmu(self, judged: list[Judged]) -> Scored:
        try:
            return await self.scorer.score.remote(judged)
        except Exception as exc:  # replica died, scorer overloaded or not loaded
            log.warning("PRMU scorer unavailable: %s", exc)
            raise ClientError(503, "PRMU scorer unavailable", headers={"Retry-After": self.retry_after}) from None

    def _stage(self, stage: Optional[str]) -> tuple[str, dict[str, float]]:
        name = stage or next(iter(self.stages))
        if name not in self.stages:
            known = ", ".join(self.stages)
            raise ClientError(422, "invalid request", [("stage", f"unknown stage {name!r}; known: {known}")])
        return name, self.stages[name]

    async def compute_rewards(self, stage: Optional[str], items: list[Any]) -> RewardResponse:
        """The composite reward of a batch; the route and in-cluster handle callers share it."""
        name, weights = self._stage(stage)
        needs_prmu = weights.get("prmu", 0) != 0
        self._check_limits(items, ("input", "response", "gold"))
        judged = [judge(self.tags, self._input(x, i, needs_prmu)) for i, x in enumerate(items)]
        valid = gated(judged)
        scored = await self._prmu(valid) if needs_prmu and valid else Scored([], None, None)
        prmu = FixedScores(scored.scores, scored.stats)
        results = CompositeReward(weights, RewardContext(self.tags, self.cfg.reward, prmu)).score_judged(judged)
        return RewardResponse(stage=name, model_version=scored.version,
                              results=[RewardValue(reward=r.reward, components=r.components) for r in results])

    # ------------------------------------------------------------ routes

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> dict:
        try:
            info = await asyncio.wait_for(self.scorer.info.remote(), timeout=5)
        except Exception:
            raise ClientError(503, "PRMU not loaded", headers={"Retry-After": self.retry_after}) from None
        return {"status": "ready", "model_version": info["version"]}

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS)
    async def model(self) -> ModelInfo:
        try:
            return ModelInfo(**await self.scorer.info.remote())
        except Exception:
            raise ClientError(503, "PRMU not loaded", headers={"Retry-After": self.retry_after}) from None

    @app.get("/metrics", responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus exposition"},
        401: {"model": ErrorResponse}})
    async def metrics(self) -> Response:
        """This ingress replica's series in Prometheus' text format:
        ``tagpr_ingress_requests_total{route,code}`` (requests by route and status code) and the
        histogram ``tagpr_ingress_latency_seconds{route}`` (``_bucket``, ``_sum``, ``_count``). Every
        replica's series, the scorer's included, are on Ray's metrics endpoint (``ray_tagpr_*``)."""
        return PlainTextResponse(self.edge.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS)
    async def score(self, req: ScoreRequest, request: Request) -> ScoreResponse:
        """PRMU scores of a batch of (user, input, response)."""
        request.state.items = len(req.items)
        self._check_limits(req.items, ("input", "response"))
        judged = [judge(self.tags, self._input(x, i, True)) for i, x in enumerate(req.items)]
        scored = await self._prmu(judged)
        return ScoreResponse(scores=scored.scores, model_version=scored.version)

    @app.post("/v1/reward", response_model=RewardResponse, responses=ERRORS)
    async def reward(self, req: RewardRequest, request: Request) -> RewardResponse:
        """The TagPR composite reward of a batch, with every component."""
        request.state.items = len(req.items)
        return await self.compute_rewards(req.stage, req.items)

    @app.post("/get_reward", response_model=OpenRLHFResponse, responses=ERRORS)
    async def get_reward(self, req: OpenRLHFRequest, request: Request, task: Optional[str] = None,
                         stage: Optional[str] = None) -> OpenRLHFResponse:
        """OpenRLHF's remote reward-model protocol: point ``--reward.remote_url`` (``--remote_rm_url``)
        here. Errors name the OpenRLHF field: ``query[i]``, ``prompts[i]``, ``labels[i].gold``."""
        request.state.items = len(req.query)
        batch = openrlhf.to_batch(req, task, self.queries)  # RequestIssues: a 422 naming the OpenRLHF field
        if not batch.items:
            return openrlhf.answer([])
        try:
            out = await self.compute_rewards(stage, batch.items)
        except ClientError as exc:
            exc.issues = [(batch.field(f), r) for f, r in exc.issues]
            raise
        return openrlhf.answer(out.results)
