"""The TrajectoryBuffer actor: the producers' coordinator and the learner's queue.

Rollout workers ask it for work (:meth:`request_work`): the newest weights first if theirs are
older, else prompts, as many as the staleness gate and capacity allow (none: back-pressure, the
worker waits). They offer finished groups; the learner takes one step's groups at a time. The
accounting, weight state included, lives in :class:`tagpr.rl.buffer.BufferCore`; this adapter adds Ray,
metrics and the current stage.

The actor serves calls on several threads (create it with ``max_concurrency`` above the number of
workers plus two), so one condition variable guards the core. A producer with no room, or a
learner with no complete step, waits here up to ``wait_s`` and is woken by the change it waits
for, instead of polling the actor.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from typing import Any, Sequence

from actors.weights import WeightUpdate
from tagpr.rl.batch import informative, stage_reward
from tagpr.rl.buffer import BufferCore, PromptCursor, Work
from tagpr.rl.trajectory import Group, PromptRef


def _guarded(method):
    """Run under the buffer's condition variable, then wake its waiters: any change may be the one
    a producer or the learner waits for."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._cv:
            try:
                return method(self, *args, **kwargs)
            finally:
                self._cv.notify_all()

    return call


class TrajectoryBuffer:
    def __init__(self, prompt_ids: Sequence[str], capacity: int, max_staleness: int, groups_per_step: int,
                 stages: dict[str, dict[str, float]], seed: int = 0, dynamic_sampling: bool = False,
                 max_filtered: int = 0):
        """``stages``: each stage's reward weights, in order (the first is current); dynamic sampling
        admits only groups whose rewards under the current stage's weights differ, filtering at most
        ``max_filtered`` per step."""
        from ray.util import metrics

        self.core = BufferCore(PromptCursor(prompt_ids, seed), capacity, max_staleness, groups_per_step,
                               self._informative if dynamic_sampling else None, max_filtered)
        self.stages = stages
        self.stage = next(iter(stages))
        self.learner_wait_s = 0.0  # time take() spent waiting for a complete step (the autoscaler's signal)
        self._cv = threading.Condition()
        self._depth = metrics.Gauge("tagpr_buffer_depth", "groups buffered", tag_keys=("kind",))
        self._drops = metrics.Counter("tagpr_buffer_dropped_groups", "groups dropped, by reason", tag_keys=("reason",))
        self._staleness = metrics.Counter("tagpr_buffer_consumed_staleness", "consumed groups by staleness",
                                  tag_keys=("staleness",))

    def _export(self) -> None:
        self._depth.set(len(self.core.groups), tags={"kind": "buffered"})
        self._depth.set(len(self.core.in_flight), tags={"kind": "in_flight"})

    # ------------------------------------------------------------ producers

    def _wait(self, ready, wait_s: float) -> None:
        """Wait (holding ``self._cv``) until ``ready()`` or ``wait_s`` has passed."""
        deadline = time.monotonic() + wait_s
        while not ready() and (left := deadline - time.monotonic()) > 0:
            self._cv.wait(left)

    @_guarded
    def request_work(self, worker_id: str, k: int, worker_version: int, wait_s: float = 0.0) -> Work:
        """:class:`Stop`, :class:`LoadWeights` (load them, then ask again), or :class:`Prompts` (none
        after ``wait_s`` without room: back-pressure)."""
        self._wait(lambda: self.core.work_ready(worker_version), wait_s)
        work = self.core.work(worker_id, k, worker_version, self.stage)
        self._export()
        return work

    @_guarded
    def offer(self, group: Group) -> bool:
        """Whether the group was admitted; a dropped one is counted under its reason."""
        outcome = self.core.offer(group)
        if outcome != "admitted":
            self._drops.inc(tags={"reason": outcome})
        self._export()
        return outcome == "admitted"

    @_guarded
    def give_back(self, ref: PromptRef, reason: str) -> bool:
        given = self.core.give_back(ref, reason)
        if given:
            self._drops.inc(tags={"reason": reason})
        self._export()
        return given

    @_guarded
    def release(self, worker_id: str) -> list[PromptRef]:
        refs = self.core.release(worker_id)
        if refs:
            self._drops.inc(len(refs), tags={"reason": "released"})
        self._export()
        return refs

    # ------------------------------------------------------------ the learner and the controller

    @_guarded
    def take(self, wait_s: float = 0.0) -> list[Group] | None:
        """One step's groups, or None if none is complete after ``wait_s``."""
        start = time.monotonic()
        self._wait(self.core.step_ready, wait_s)
        self.learner_wait_s += time.monotonic() - start
        stale_before = self.core.stats.dropped["stale"]
        groups = self.core.take()
        if self.core.stats.dropped["stale"] > stale_before:
            self._drops.inc(self.core.stats.dropped["stale"] - stale_before, tags={"reason": "stale"})
        for g in groups or []:
            self._staleness.inc(tags={"staleness": str(self.core.steps_taken - 1 - g.policy_version)})
        self._export()
        return groups

    @_guarded
    def publish(self, update: WeightUpdate) -> None:
        self.core.publish(update)

    @_guarded
    def weights_lost(self, version: int) -> None:
        self.core.weights_lost(version)

    def _informative(self, group: Group) -> bool:
        weights = self.stages[self.stage]
        return informative([stage_reward(t, weights) for t in group.trajectories])

    @_guarded
    def set_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(self.stages)})")
        self.stage = stage

    @_guarded
    def stop_producers(self) -> None:
        self.core.stop()

    @_guarded
    def stats(self) -> dict[str, Any]:
        s = self.core.stats
        holders = Counter(w for _, w in self.core.in_flight.values())
        return {"buffered": len(self.core.groups), "in_flight": len(self.core.in_flight),
                "in_flight_by_worker": dict(holders), "offered": s.offered,
                "admitted": s.admitted, "consumed": s.consumed, "dropped": dict(s.dropped),
                "staleness": {str(k): v for k, v in sorted(s.staleness.items())},
                "blocked_requests": s.blocked_requests,
                "version": self.core.version, "steps_taken": self.core.steps_taken,
                "learner_wait_s": self.learner_wait_s}

    @_guarded
    def snapshot(self) -> dict[str, Any]:
        return {**self.core.snapshot(), "stage": self.stage}

    @_guarded
    def restore(self, snap: dict[str, Any]) -> None:
        """Continue from a snapshot. Producers get no prompts until the restored learner publishes its
        weights: workers may hold newer ones from before the rewind. The stage stays the current one
        (the controller's), not the snapshot's: a stage starts from the previous stage's checkpoint."""
        self.core.restore(snap)


def create_buffer(cfg, prompt_ids: Sequence[str], **options):
    """The job's TrajectoryBuffer actor from ``cfg`` (``options``: Ray actor options)."""
    import ray

    return ray.remote(TrajectoryBuffer).options(**options).remote(
        prompt_ids, cfg.rollout.capacity, cfg.rl.max_staleness, cfg.rl.prompts_per_step,
        {s.name: s.weights for s in cfg.rl.stages}, cfg.run.seed, cfg.rl.dynamic_sampling,
        cfg.rl.dynamic_sampling_max_filtered * cfg.rl.prompts_per_step)
