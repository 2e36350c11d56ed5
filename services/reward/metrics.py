"""Service metrics.

Series recorded with ``ray.util.metrics`` appear for every replica on Ray's Prometheus endpoint
(``ray metrics launch-prometheus`` scrapes it); the ingress also keeps its own series in a
prometheus-client registry, exposed at the ingress's ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class IngressMetrics:
    """Requests by route and status code, latency, items: one call records to both backends."""

    def __init__(self):
        from ray.util import metrics as rm

        self._requests = rm.Counter("tagpr_reward_requests", "requests by route and status code",
                                    tag_keys=("route", "code"))
        self._latency = rm.Histogram("tagpr_reward_latency_seconds", "request latency", LATENCY_BUCKETS,
                                     tag_keys=("route",))
        self._items = rm.Counter("tagpr_reward_items", "items received", tag_keys=("route",))
        self.registry = CollectorRegistry()
        self._p_requests = Counter("tagpr_ingress_requests", "requests by route and status code",
                                   ("route", "code"), registry=self.registry)
        self._p_latency = Histogram("tagpr_ingress_latency_seconds", "request latency", ("route",),
                                    buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, route: str, code: int, seconds: float, items: int = 0) -> None:
        self._requests.inc(1, tags={"route": route, "code": str(code)})
        self._latency.observe(seconds, tags={"route": route})
        if items:
            self._items.inc(items, tags={"route": route})
        self._p_requests.labels(route, str(code)).inc()
        self._p_latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ScorerMetrics:
    def __init__(self):
        from ray.util import metrics as rm

        self._batch = rm.Histogram("tagpr_prmu_batch_size", "items per scored batch", BATCH_BUCKETS)
        self._items = rm.Counter("tagpr_prmu_items_scored", "items scored by the PRMU")
        self._version = rm.Gauge("tagpr_prmu_model_info", "1 for the PRMU version being served",
                                 tag_keys=("version",))

    def batch(self, size: int, version: str) -> None:
        self._batch.observe(size)
        self._items.inc(size)
        self._version.set(1, tags={"version": version})

    def model(self, version: str, previous: str | None) -> None:
        if previous and previous != version:
            self._version.set(0, tags={"version": previous})
        self._version.set(1, tags={"version": version})
