"""A new model for a running Serve application without replacing its replicas.

The folder an application should serve lives in a small detached named actor (:class:`Served`).
Every replica polls it and, when it changes, loads the new folder beside the model it serves and
switches in one assignment, so requests in flight finish on the model they started with. A
redeploy would restart the replicas instead, and requests queued on them could be stranded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import ray

log = logging.getLogger("tagpr.service")


@ray.remote(num_cpus=0)
class Served:
    """The folder an application should serve."""

    def __init__(self, path: str):
        self.path = path

    def set(self, path: str) -> None:
        self.path = path

    def get(self) -> str:
        return self.path


def point(actor_name: str, path: str):
    """The named registry, created or pointed at ``path`` (made absolute): what the replicas of
    its application load next."""
    path = os.path.abspath(path)
    actor = Served.options(name=actor_name, lifetime="detached", get_if_exists=True).remote(path)
    ray.get(actor.set.remote(path))
    return actor


async def follow(actor_name: str, current: Callable[[], str], load: Callable[[str], None], what: str,
                 poll_s: float = 1.0) -> None:
    """A replica's watch: every ``poll_s``, when the registry names another folder than
    ``current()``, ``load`` it (in a thread, so serving goes on). A folder that fails to load
    leaves the current model serving."""
    registry = ray.get_actor(actor_name)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(poll_s)
        try:
            wanted = await registry.get.remote()
            if wanted != current():
                await loop.run_in_executor(None, load, wanted)
        except Exception:
            log.exception("could not switch the %s", what)
