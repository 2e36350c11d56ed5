"""Profiles that requests sent, held for the application rather than for one ingress replica.

Each ingress replica answers from its own :class:`tagpr.answering.ProfileStore` and writes every
profile a request sends through to :class:`SentProfiles`, a detached named actor per application
(``<app>-profiles``). It outlives the replicas: one started later (a redeploy that replaces the
ingress, a restart after a crash, a second replica) takes the sent profiles from it when it starts,
and asks it for a user it does not hold, so a user who sent a profile once stays known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import ray

from tagpr.answering import ProfileStore, UserProfile


def profiles_name(app_name: str) -> str:
    return f"{app_name}-profiles"


@ray.remote(num_cpus=0)
class SentProfiles:
    """The sent profiles of one application, least recently sent first out beyond ``capacity``."""

    def __init__(self, capacity: int = 10_000):
        self.store = ProfileStore(capacity=capacity)

    def put(self, user_id: str, task: str, profile: Sequence[Mapping[str, Any]]) -> None:
        self.store.put(user_id, task, profile)

    def get(self, user_id: str) -> Optional[UserProfile]:
        return self.store.get(user_id)

    def all(self) -> list[tuple[str, UserProfile]]:
        """Every sent profile, least recently sent first (the order a store replays them in)."""
        return self.store.sent_profiles()


def open_profiles(app_name: str):
    """The application's :class:`SentProfiles`, created the first time (it survives redeploys)."""
    return SentProfiles.options(name=profiles_name(app_name), lifetime="detached", get_if_exists=True).remote()
