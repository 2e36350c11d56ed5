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
    """The application: the batching policy server behind the FastAPI ingress."""
    from services import swap
    from services.policy.app import PolicyIngress, PolicyServer
    from tagpr.answering import ProfileStore

    check_policy(policy)
    swap.point(registry_name(name), policy)
    if profiles:
        ProfileStore.from_lamp(profiles, cfg.data.tasks)  # fail here, not in a replica
    s = cfg.policy_service
    server = PolicyServer.options(
        num_replicas=s.num_replicas, max_ongoing_requests=max(2 * s.max_batch_size, 8),
        ray_actor_options={"num_cpus": cfg.rollout.num_cpus, "num_gpus": cfg.rollout.num_gpus},
        user_config={"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s},
    ).bind(registry_name(name), cfg.model_dump(mode="json"))
    return PolicyIngress.options(num_replicas=1, max_ongoing_requests=max(4 * s.max_batch_size, 16)).bind(
        server, cfg.model_dump(mode="json"), token_sha256, os.path.abspath(profiles) if profiles else None)


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


def swap_policy(policy: str, name: str = APP_NAME, timeout_s: float = 600.0) -> float:
    """Serve ``policy`` in the running application without failed requests: its replicas load it
    beside the current engine and switch between two generate calls. Returns the seconds until a
    replica answers with it."""
    from ray import serve

    from services import swap

    check_policy(policy)
    path = os.path.abspath(policy)
    start = time.monotonic()
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
