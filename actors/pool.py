"""The RolloutPool: rollout worker actors that can be added and removed while generation runs.

Each worker runs its :meth:`RolloutWorker.run` loop as one long Ray call; the pool watches those
calls. A worker that dies (actor crash, node loss) is replaced, and the buffer re-queues the
prompts it held, so none is lost; a late result from it is refused as "not in flight", so none
is trained on twice. A removed worker finishes its batch and leaves; anything it still held goes
back in the queue. A new worker loads the buffer's newest weights before its first prompt.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from tagpr.config import TagPRConfig

log = logging.getLogger("tagpr.pool")


@dataclass
class _Member:
    id: str
    actor: Any
    run_ref: Any  # the worker's run() call: it ends when the worker stops or dies


class RolloutPool:
    def __init__(self, cfg: TagPRConfig, buffer, policy: str, resources: dict[str, float] | None = None):
        self.cfg, self.buffer, self.policy = cfg, buffer, policy
        r = cfg.rollout
        self.resources = resources or {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "resources": r.resources}
        self.members: dict[str, _Member] = {}
        self.events: list[dict[str, Any]] = []  # scale, death and replacement, with times
        self.replacements = 0
        self._ids = itertools.count()

    @property
    def size(self) -> int:
        return len(self.members)

    def _start(self) -> str:
        import ray

        from actors.rollout import RolloutWorker

        wid = f"rollout-{next(self._ids)}"
        actor = ray.remote(RolloutWorker).options(max_concurrency=4, max_restarts=0, **self.resources).remote(
            wid, self.cfg.model_dump(mode="json"), self.buffer, self.policy)
        self.members[wid] = _Member(wid, actor, actor.run.remote())
        return wid

    def scale(self, n: int) -> int:
        """Grow or shrink to ``n`` workers (within ``rollout.min_workers..max_workers``); the new size."""
        r = self.cfg.rollout
        n = max(r.min_workers, min(r.max_workers, n))
        while self.size < n:
            self.events.append({"t": time.time(), "event": "add", "worker": self._start()})
        for wid in list(self.members)[n:]:
            self._remove(wid)
        return self.size

    def _remove(self, wid: str) -> None:
        import ray

        m = self.members.pop(wid)
        m.actor.stop.remote()
        try:
            ray.get(m.run_ref, timeout=self.cfg.rollout.sync_timeout_s)
        except Exception as exc:  # it died on the way out; what it held is re-queued below
            log.warning("%s failed while stopping: %s", wid, exc)
        ray.get(self.buffer.release.remote(wid))
        ray.kill(m.actor)
        self.events.append({"t": time.time(), "event": "remove", "worker": wid})

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every worker has its engine up (and holds its resources, so what is left for the
        learner is known)."""
        import ray

        ray.get([m.actor.health.remote() for m in self.members.values()], timeout=timeout_s)

    def check(self) -> list[str]:
        """Replace workers whose run loop ended with an error; the ids of those replaced."""
        import ray

        replaced = []
        for wid, m in list(self.members.items()):
            done, _ = ray.wait([m.run_ref], timeout=0)
            if not done:
                continue
            try:
                ray.get(m.run_ref)
                continue  # left on its own (the buffer stopped producers)
            except Exception as exc:
                log.warning("rollout worker %s died: %s", wid, exc)
                error = exc
            del self.members[wid]
            ray.kill(m.actor)  # an exception may have left the actor alive
            requeued = ray.get(self.buffer.release.remote(wid))
            self.replacements += 1
            if self.replacements > self.cfg.rollout.max_replacements:
                raise RuntimeError(f"rollout workers failed {self.replacements} times; the last error: {error}")
            new = self._start()
            self.events.append({"t": time.time(), "event": "replace", "worker": wid, "by": new,
                                "requeued": [r.key for r in requeued]})
            replaced.append(wid)
        return replaced

    def health(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([m.actor.health.remote() for m in self.members.values()])

    def shutdown(self) -> None:
        import ray

        for m in self.members.values():
            m.actor.stop.remote()
        for m in self.members.values():
            try:
                ray.get(m.run_ref, timeout=self.cfg.rollout.sync_timeout_s)
            except Exception:  # shutting down: a dead worker has nothing left to return
                pass
            ray.kill(m.actor)
        self.members.clear()
