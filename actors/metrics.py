"""Training metrics to three sinks at once: ``metrics.jsonl`` in the run directory (the record),
TensorBoard (``<run dir>/tensorboard``), and Prometheus gauges through ``ray.util.metrics``
(``tagpr_<prefix>_<name>``, scraped from Ray's metrics endpoint)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any


class RunMetrics:
    def __init__(self, run_dir: str | Path, prefix: str):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._gauges: dict[str, Any] = {}
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
        if self._tb is not None:
            self._tb.flush()

    def _gauge(self, name: str):
        if name not in self._gauges:
            from ray.util import metrics

            metric = re.sub(r"[^a-zA-Z0-9_]", "_", f"tagpr_{self.prefix}_{name}")
            self._gauges[name] = metrics.Gauge(metric, f"{self.prefix} {name}")
        return self._gauges[name]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
