"""Clients of the reward service: over HTTP (httpx), or in-cluster through a Serve handle.

All take :class:`tagpr.rewards.RewardInput` and return the same shapes; the service clients convert
to the service's items here, at the edge (``services/reward/schemas.py``). The HTTP client retries
connection errors and 5xx answers with exponential backoff (honouring ``Retry-After``); client
mistakes (4xx) are not retried. When a batch still fails, the failure policy decides: ``raise``
(default), or ``default``: every item of that batch gets ``default_reward`` and the failure is
counted and logged, so a training run can ride out a reward-service outage without mistaking the
default for a real score.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, Optional, Sequence

import httpx

from services.reward.schemas import RewardItem, ScoreItem
from tagpr.rewards import RewardInput, RewardResult

log = logging.getLogger("tagpr.reward.client")

FailurePolicy = Literal["raise", "default"]
RETRY_STATUS = frozenset({500, 502, 503, 504})


class RewardServiceError(RuntimeError):
    def __init__(self, message: str, status: Optional[int] = None, body: Any = None):
        super().__init__(message)
        self.status, self.body = status, body


class RewardClient:
    remote = True  # scores in the service; one httpx.Client serves several threads' requests

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5, failure_policy: FailurePolicy = "raise", default_reward: float = 0.0,
                 transport: Optional[httpx.BaseTransport] = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers, transport=transport)
        self.retries, self.backoff = retries, backoff
        self.failure_policy, self.default_reward = failure_policy, default_reward
        self.failed_items = 0  # items that got the default reward

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, path: str, payload: dict) -> dict:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, last))
            try:
                resp = self.http.post(path, json=payload)
            except httpx.TransportError as exc:
                last = exc
                continue
            if resp.status_code in RETRY_STATUS:
                last = RewardServiceError(f"{path}: HTTP {resp.status_code}", resp.status_code, _body(resp))
                last.retry_after = resp.headers.get("retry-after")  # type: ignore[attr-defined]
                continue
            if resp.status_code >= 400:
                raise RewardServiceError(f"{path}: HTTP {resp.status_code}: {_body(resp)}", resp.status_code,
                                         _body(resp))
            return resp.json()
        raise RewardServiceError(f"{path}: gave up after {self.retries + 1} attempts: {last}",
                                 getattr(last, "status", None))

    def _delay(self, attempt: int, last: Exception | None) -> float:
        retry_after = getattr(last, "retry_after", None)
        if retry_after and str(retry_after).replace(".", "", 1).isdigit():
            return min(float(retry_after), 30.0)
        return self.backoff * 2 ** (attempt - 1)

    def _fallback(self, n: int, exc: RewardServiceError) -> list[RewardResult]:
        if self.failure_policy == "raise" or (exc.status is not None and 400 <= exc.status < 500):
            raise exc
        self.failed_items += n
        log.warning("reward service failed (%s); %d item(s) get the default reward %s (%d so far)",
                    exc, n, self.default_reward, self.failed_items)
        return [RewardResult(self.default_reward, defaulted=True) for _ in range(n)]

    def score(self, items: Sequence[RewardInput]) -> tuple[list[float], str]:
        """Raw PRMU scores and the model version (``/v1/score``); always raises on failure."""
        out = self._post("/v1/score", {"items": [_json(ScoreItem.from_input(x)) for x in items]})
        return out["scores"], out["model_version"]

    def reward(self, items: Sequence[RewardInput], stage: Optional[str] = None) -> list[RewardResult]:
        """Composite rewards with components (``/v1/reward``), under the failure policy."""
        payload = {"stage": stage, "items": [_json(RewardItem.from_input(x)) for x in items]}
        try:
            out = self._post("/v1/reward", payload)
        except RewardServiceError as exc:
            return self._fallback(len(items), exc)
        return [RewardResult(r["reward"], r["components"]) for r in out["results"]]

    def get(self, path: str) -> dict:
        resp = self.http.get(path)
        if resp.status_code >= 400:
            raise RewardServiceError(f"{path}: HTTP {resp.status_code}: {_body(resp)}", resp.status_code, _body(resp))
        return resp.json()


def _json(item: ScoreItem | RewardItem) -> dict:
    """The item's JSON body, without the fields left unset (None)."""
    return item.model_dump(mode="json", exclude_none=True)


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:500]


class HandleRewardClient:
    """In-cluster: the same calls through a Serve deployment handle, skipping HTTP."""

    remote = True

    def __init__(self, app_name: str = "tagpr-reward"):
        from ray import serve

        self.handle = serve.get_deployment_handle("RewardIngress", app_name=app_name)

    def reward(self, items: Sequence[RewardInput], stage: Optional[str] = None) -> list[RewardResult]:
        out = self.handle.compute_rewards.remote(stage, [RewardItem.from_input(x) for x in items]).result()
        return [RewardResult(r.reward, r.components) for r in out.results]


class LocalRewardClient:
    """No service: the composite reward computed in this process (the PRMU from ``prmu.checkpoint``
    when a stage weights it), with the same call and result shape as the service clients. It scores in
    the worker's own process, on the worker's CPUs, so the worker calls it one group at a time."""

    remote = False

    def __init__(self, cfg):
        self.cfg = cfg
        self._stages: dict[str, Any] = {}

    def _reward_for(self, stage: str):
        from tagpr.rewards import CompositeReward

        if stage not in self._stages:
            weights = {s.name: s.weights for s in self.cfg.rl.stages}.get(stage, {})
            prmu = None
            if weights.get("prmu") and self.cfg.prmu.checkpoint:
                from tagpr.prmu.scorer import PRMUScorer

                prmu = PRMUScorer.load(self.cfg.prmu.checkpoint, allow_hub=self.cfg.model.allow_hub,
                                       score_with_user_id=self.cfg.prmu.score_with_user_id)
            self._stages[stage] = CompositeReward.for_stage(self.cfg, stage, prmu)
        return self._stages[stage]

    def reward(self, items: Sequence[RewardInput], stage: Optional[str] = None) -> list[RewardResult]:
        reward = self._reward_for(stage or self.cfg.rl.stages[0].name)
        return [RewardResult(r.reward, r.components) for r in reward.score(items)]


class NoReward:
    """Rewards off: every sample scores 0 (throughput measurements, generation-only runs)."""

    def reward(self, items: Sequence[RewardInput], stage: Optional[str] = None) -> list[RewardResult]:
        return [RewardResult(0.0) for _ in items]


def make_reward_client(cfg, via: str):
    """The reward client a rollout worker uses: ``local``, ``http`` (``service.*``), ``handle`` (Serve) or
    ``none``."""
    from tagpr.credentials import read_secret

    if via == "none":
        return NoReward()
    if via == "local":
        return LocalRewardClient(cfg)
    if via == "handle":
        return HandleRewardClient()
    s = cfg.service
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    url = cfg.rollout.reward_url or f"http://{host}:{s.port}"
    r = cfg.rollout
    return RewardClient(url, token=read_secret(s.token_env), timeout=r.reward_timeout_s,
                        retries=r.reward_retries, failure_policy=r.reward_failure_policy)
