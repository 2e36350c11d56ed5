"""Deploying the policy service: build the Serve application from a config and a policy folder."""

from __future__ import annotations

import os
import time
from typing import Optional

from services.edge import token_digest
from tagpr.config import TagPRConfig
from tagpr.errors import TagPRError

APP_NAME = "tagpr-policy"


def registry_name(app_name: str) -> str:
    return f"{app_name}-policy"


def check_policy(policy: str) -> None:
    if not os.path.isfile(os.path.join(policy, "config.json")):
        raise TagPRError(f"{policy}: not a policy folder (no config.json)")


def build_app(cfg: TagPRConfig, policy: str, token_sha256: Optional[str] = None, profiles: Optional[str] = None,
              name: str = APP_NAME):
    """The application: the FastAPI ingress in front of the configured backend's engine
    deployment (:mod:`services.policy.backends`)."""
    from services.policy.app import PolicyIngress
    from services.policy.profiles import open_profiles, profiles_name
    from tagpr.answering import ProfileStore

    check_policy(policy)
    s = cfg.policy_service
    if s.backend == "serve_llm" and cfg.rollout.engine.kind != "vllm":
        raise TagPRError(f"policy_service.backend serve_llm runs vLLM; rollout.engine.kind "
                         f"{cfg.rollout.engine.kind} needs policy_service.backend=adapter")
    if profiles:
        ProfileStore.from_lamp(profiles, cfg.data.tasks)  # fail here, not in a replica
    policy = os.path.abspath(policy)
    config = cfg.model_dump(mode="json")
    server = _engine(cfg, policy, name, config)
    open_profiles(name)
    return PolicyIngress.options(num_replicas=1, max_ongoing_requests=max(4 * s.max_batch_size, 64)).bind(
        server, config, profiles_name(name), token_sha256, os.path.abspath(profiles) if profiles else None)


def _engine(cfg: TagPRConfig, policy: str, name: str, config: dict):
    s = cfg.policy_service
    if s.backend == "serve_llm":
        from ray.serve.llm import build_llm_deployment

        from services.policy.backends import llm_config

        return build_llm_deployment(llm_config(cfg, policy))
    from services import swap
    from services.policy.app import PolicyServer

    swap.point(registry_name(name), policy)
    return PolicyServer.options(
        max_ongoing_requests=max(2 * s.max_batch_size, 8),
        ray_actor_options={"num_cpus": cfg.rollout.num_cpus, "num_gpus": cfg.rollout.num_gpus},
        user_config={"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s},
        **s.replicas(),
    ).bind(registry_name(name), config)


def deploy(cfg: TagPRConfig, policy: str, profiles: Optional[str] = None, token_env: Optional[str] = None,
           name: str = APP_NAME, route_prefix: Optional[str] = None) -> None:
    from ray import serve

    digest = token_digest(token_env or cfg.policy_service.token_env)
    serve.run(build_app(cfg, policy, digest, profiles, name), name=name,
              route_prefix=route_prefix or cfg.policy_service.route_prefix)


def running(name: str = APP_NAME) -> bool:
    """Whether the cluster already serves the application ``name``."""
    from ray import serve

    return name in serve.status().applications


def swap_policy(cfg: TagPRConfig, policy: str, profiles: Optional[str] = None, name: str = APP_NAME,
                timeout_s: float = 600.0) -> float:
    """Serve ``policy`` in the running application without failed requests; returns the seconds
    until it answers with it. ``adapter``: its replicas load the policy beside the current engine
    and switch between two generate calls. ``serve_llm``: a redeploy, which Serve rolls out while
    the old replicas finish their requests and new ones wait in the queue."""
    from ray import serve

    from services import swap

    check_policy(policy)
    path = os.path.abspath(policy)
    start = time.monotonic()
    if cfg.policy_service.backend == "serve_llm":
        deploy(cfg, path, profiles, name=name)
        return time.monotonic() - start
    swap.point(registry_name(name), path)
    server = serve.get_deployment_handle("PolicyServer", app_name=name)
    while server.info.remote().result()["policy"] != path:
        if time.monotonic() - start > timeout_s:
            raise TagPRError(f"{policy}: not serving after {timeout_s:.0f} s (see the PolicyServer replica's log)")
        time.sleep(1.0)
    return time.monotonic() - start


def url(cfg: TagPRConfig) -> str:
    s = cfg.policy_service
    return f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"


def serve_policy(cfg: TagPRConfig, policy: str, profiles: Optional[str] = None, name: str = APP_NAME) -> str:
    """Start Serve's proxy on ``policy_service.host:port`` (loopback by default; a proxy already
    running keeps its address), deploy; returns the URL of the app."""
    from ray import serve

    s = cfg.policy_service
    serve.start(http_options={"host": s.host, "port": s.port})
    deploy(cfg, policy, profiles, name=name)
    return url(cfg)
