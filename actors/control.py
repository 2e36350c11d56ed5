"""A running RL job's control point: the named actor ``<run name>-control`` in the job's namespace.

``tagpr scale rollout N`` (or anyone with a Ray connection) files a request here; the controller's
watch thread, the only code that resizes the pool, applies it within a second and reports back.
The actor also holds the pool's size and every scaling decision (counted in Prometheus; the size
itself is the controller's ``tagpr_rollout_workers``).
"""

from __future__ import annotations

import time
from typing import Any


def control_name(run_name: str) -> str:
    return f"{run_name}-control"


class RunControl:
    def __init__(self, min_workers: int, max_workers: int, size: int):
        from ray.util import metrics

        self.min, self.max, self.size = min_workers, max_workers, size
        self.requests: list[tuple[int, int]] = []  # (ticket, wanted size), oldest first
        self.tickets = 0
        self.applied_ticket = 0
        self.decisions: list[dict[str, Any]] = []
        self._decisions = metrics.Counter("tagpr_rollout_scale_decisions", "pool resizes, by source and direction",
                                          tag_keys=("source", "direction"))

    def request_scale(self, n: int) -> dict[str, Any]:
        """File a request for ``n`` workers; its ticket and the size it will get (clamped to the bounds)."""
        self.tickets += 1
        target = max(self.min, min(self.max, int(n)))
        self.requests.append((self.tickets, target))
        return {"ticket": self.tickets, "target": target, "min": self.min, "max": self.max, "size": self.size}

    def pending(self) -> tuple[int, int] | None:
        """The newest request (older ones are superseded), for the controller to apply."""
        if not self.requests:
            return None
        newest = self.requests[-1]
        self.requests.clear()
        return newest

    def record(self, size: int, previous: int, source: str, reason: str, ticket: int | None = None) -> None:
        """The pool now has ``size`` workers; ``source`` is "request" or "auto"."""
        self.size = size
        if ticket is not None:
            self.applied_ticket = max(self.applied_ticket, ticket)
        if size != previous:
            direction = "up" if size > previous else "down"
            self._decisions.inc(tags={"source": source, "direction": direction})
            self.decisions.append({"t": time.time(), "source": source, "from": previous, "to": size,
                                   "reason": reason})

    def status(self) -> dict[str, Any]:
        return {"size": self.size, "min": self.min, "max": self.max, "applied_ticket": self.applied_ticket,
                "decisions": self.decisions[-50:]}
