"""The PRMU scorer's metrics, recorded with ``ray.util.metrics``: every replica's series appear on
Ray's Prometheus endpoint (``ray metrics launch-prometheus`` scrapes it). The ingress's request
series are the shared edge's (:class:`services.edge.IngressMetrics`)."""

from __future__ import annotations

BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


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
