"""When to grow or shrink the rollout pool, from two fractions measured over a window.

The learner waiting on the buffer means generation is the bottleneck: add a worker. Workers blocked
by back-pressure mean the learner is: remove one. Both together (a cold start, a stage switch)
decide nothing. A cooldown after each decision lets the pool's new size show in the fractions
before the next one, so the pool does not oscillate on a lagging signal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleDecision:
    size: int  # the new pool size
    previous: int
    reason: str
    learner_wait_frac: float
    rollout_blocked_frac: float

    @property
    def direction(self) -> str:
        return "up" if self.size > self.previous else "down"


class AutoscalePolicy:
    def __init__(self, min_workers: int, max_workers: int, grow_above: float, shrink_above: float,
                 window_s: float, cooldown_s: float):
        if not 0 <= min_workers <= max_workers:
            raise ValueError(f"need 0 <= min_workers <= max_workers, got {min_workers}..{max_workers}")
        self.min, self.max = min_workers, max_workers
        self.grow_above, self.shrink_above = grow_above, shrink_above
        self.window_s, self.cooldown_s = window_s, cooldown_s
        self._samples: list[tuple[float, float, float, float]] = []  # (t, seconds, learner wait s, blocked s)
        self._last_decision = float("-inf")

    def observe(self, now: float, seconds: float, learner_wait_s: float, blocked_worker_s: float,
                size: int) -> ScaleDecision | None:
        """Add one measurement (``seconds`` long, ending at ``now``): the learner's seconds waiting on
        the buffer and the pool's worker-seconds blocked by back-pressure. A decision, or None."""
        self._samples.append((now, seconds, learner_wait_s, blocked_worker_s / max(size, 1)))
        self._samples = [s for s in self._samples if s[0] > now - self.window_s]
        covered = sum(s[1] for s in self._samples)
        if covered < self.window_s * 0.9 or now - self._last_decision < self.cooldown_s:
            return None
        wait = min(1.0, sum(s[2] for s in self._samples) / covered)
        blocked = min(1.0, sum(s[3] for s in self._samples) / covered)
        if wait > self.grow_above and blocked <= self.shrink_above and size < self.max:
            decision = ScaleDecision(size + 1, size, f"learner waited {wait:.0%} of {self.window_s:.0f} s",
                                     wait, blocked)
        elif blocked > self.shrink_above and wait <= self.grow_above and size > self.min:
            decision = ScaleDecision(size - 1, size, f"workers blocked {blocked:.0%} of {self.window_s:.0f} s",
                                     wait, blocked)
        else:
            return None
        self._last_decision = now
        self._samples.clear()  # the next decision sees only the new size
        return decision
