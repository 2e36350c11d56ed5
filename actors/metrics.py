"""Training metrics to three sinks at once: ``metrics.jsonl`` in the run directory (the record),
TensorBoard (``<run dir>/tensorboard``), and Prometheus gauges through ``ray.util.metrics``
(``tagpr_<prefix>_<name>``, scraped from Ray's metrics endpoint).

Ray exports a gauge only in the report interval after it was set, so a sink written every 10 s
would show on the endpoint for about one interval in ten; a daemon thread sets the last values
again every ``REFRESH_S``."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

REFRESH_S = 1.0


class RunMetrics:
    def __init__(self, run_dir: str | Path, prefix: str):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._gauges: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._closed = threading.Event()
        threading.Thread(target=self._refresh, daemon=True, name=f"metrics-{prefix}").start()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is a dependency; a trimmed install still gets the other sinks
            self._tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, "time": time.time(), "prefix": self.prefix, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if self._tb is not None:
                self._tb.add_scalar(f"{self.prefix}/{name}", value, step)
            self._gauge(name).set(float(value))
            self._last[name] = float(value)
        if self._tb is not None:
            self._tb.flush()

    def _refresh(self) -> None:
        """Set every gauge to its last logged value again, until closed (no new record)."""
        while not self._closed.wait(REFRESH_S):
            for name, value in list(self._last.items()):
                self._gauge(name).set(value)

    def _gauge(self, name: str):
        if name not in self._gauges:
            from ray.util import metrics

            metric = re.sub(r"[^a-zA-Z0-9_]", "_", f"tagpr_{self.prefix}_{name}")
            self._gauges[name] = metrics.Gauge(metric, f"{self.prefix} {name}")
        return self._gauges[name]

    def close(self) -> None:
        self._closed.set()
        if self._tb is not None:
            self._tb.close()
