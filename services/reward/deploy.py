"""Deploying the reward service: build the Serve application from a config and a checkpoint."""

from __future__ import annotations

import logging
from typing import Optional

from services.edge import token_digest
from tagpr.config import TagPRConfig

APP_NAME = "tagpr-reward"
log = logging.getLogger("tagpr.reward")


def scorer_user_config(cfg: TagPRConfig) -> dict:
    s = cfg.service
    return {"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s,
            "allow_hub": cfg.model.allow_hub}


def strip_tokens(cfg: TagPRConfig) -> tuple[str, ...]:
    """The strings the ingress cuts from OpenRLHF queries: ``service.strip_tokens``, else the policy
    tokenizer's special tokens, else common chat models' special tokens."""
    from services.reward import openrlhf

    if cfg.service.strip_tokens is not None:
        return tuple(cfg.service.strip_tokens)
    found = openrlhf.special_tokens(cfg.model.policy, cfg.model.allow_hub)
    if found:
        log.info("OpenRLHF queries: stripping %s's special tokens %s", cfg.model.policy, found)
        return tuple(found)
    log.info("OpenRLHF queries: no tokenizer at %s; stripping common special tokens", cfg.model.policy)
    return openrlhf.COMMON_SPECIAL_TOKENS


def registry_name(app_name: str) -> str:
    return f"{app_name}-prmu-checkpoint"


def _registry(app_name: str, checkpoint: str):
    """The app's checkpoint registry (:mod:`services.swap`), created or pointed at ``checkpoint``."""
    from services import swap

    swap.point(registry_name(app_name), checkpoint)


def build_app(cfg: TagPRConfig, checkpoint: str, token_sha256: Optional[str] = None, batching: bool = True,
              name: str = APP_NAME):
    """The application: autoscaled, batching PRMU scorer behind the FastAPI ingress. Each deployment
    queues at most ``service.max_queued_requests`` requests; beyond that the proxy (ingress) or the
    ingress (scorer) answers 503 with ``Retry-After`` at once, so overload sheds instead of timing out.

    ``batching=False`` serves one item per call (the unbatched baseline the benchmark compares with).
    """
    from ray.serve.config import BackpressureConfig

    from services.reward.app import PRMUScorerDeployment, RewardIngress
    from tagpr.prmu import checkpoint as ckpt

    ckpt.load_meta(checkpoint)  # fail here, not in a replica, when the folder is not a checkpoint
    _registry(name, checkpoint)
    s = cfg.service
    user_config = scorer_user_config(cfg)
    if not batching:
        user_config["max_batch_size"] = 1
        user_config["batch_wait_timeout_s"] = 0.0
    backpressure = BackpressureConfig(status_code=503, retry_after_s=s.retry_after_s)
    scorer = PRMUScorerDeployment.options(
        max_ongoing_requests=max(2 * s.max_batch_size, 8), max_queued_requests=s.max_queued_requests,
        autoscaling_config={"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                            "target_ongoing_requests": s.target_ongoing_requests},
        user_config=user_config,
    ).bind(registry_name(name))
    # the ingress takes no more than the scorer can hold, so overload is shed at the proxy (cheap)
    return RewardIngress.options(max_ongoing_requests=max(2 * s.max_batch_size, 8),
                                 max_queued_requests=s.max_queued_requests, backpressure_config=backpressure).bind(
        scorer, cfg.model_dump(mode="json"), token_sha256, strip_tokens(cfg))


def deploy(cfg: TagPRConfig, checkpoint: str, token_env: Optional[str] = None, batching: bool = True,
           name: str = APP_NAME, route_prefix: str = "/") -> None:
    """Deploy the application (a redeploy replaces its replicas; use ``swap_checkpoint`` for a new model)."""
    from ray import serve

    digest = token_digest(token_env or cfg.service.token_env)
    serve.run(build_app(cfg, checkpoint, digest, batching, name), name=name, route_prefix=route_prefix)


def swap_checkpoint(checkpoint: str, name: str = APP_NAME) -> None:
    """Serve a new checkpoint without downtime: the scorer replicas load it beside the old model
    and switch within about a second; requests already in a batch finish on the old model."""
    from tagpr.prmu import checkpoint as ckpt

    ckpt.load_meta(checkpoint)
    _registry(name, checkpoint)


def serve_reward(cfg: TagPRConfig, checkpoint: str, token_env: Optional[str] = None, batching: bool = True,
                 name: str = APP_NAME) -> str:
    """Start Serve's proxy on ``service.host:service.port`` (loopback by default), deploy; returns the URL."""
    from ray import serve

    serve.start(http_options={"host": cfg.service.host, "port": cfg.service.port})
    deploy(cfg, checkpoint, token_env, batching, name)
    return f"http://{cfg.service.host}:{cfg.service.port}"
