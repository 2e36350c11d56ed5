"""Streaming a LaMP questions file vs ``json.load``: peak memory and time, side by side.

Real LaMP questions files run to hundreds of MB because every question repeats the user's whole
profile. The loader reads them as a stream of validated records; this measures what that buys
when records are consumed one at a time (counting tokens, feeding a Ray Data pipeline).
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

from tagpr.config import SyntheticConfig
from tagpr.lamp.io import iter_questions, validate_question
from tagpr.lamp.synthetic import generate_split
from tagpr.lamp.tasks import get_task

TASK = "LaMP_2"


def _make_file(path: Path) -> int:
    cfg = SyntheticConfig(seed=0, users={"bench": 400}, questions_per_user=10, profile_size=60)
    split = generate_split(TASK, 1, 400, cfg)
    path.write_text(json.dumps(split.questions))
    return len(split.questions)


def _eager(path: Path) -> int:
    task = get_task(TASK)
    with open(path, encoding="utf-8") as fh:
        records = json.load(fh)
    return sum(len(validate_question(task, r, str(path), i).profile) for i, r in enumerate(records))


def _stream(path: Path) -> int:
    return sum(len(q.profile) for q in iter_questions(TASK, path))


def _measure(fn, path: Path) -> tuple[float, float, int]:
    gc.collect()
    start = time.perf_counter()
    n = fn(path)
    seconds = time.perf_counter() - start
    gc.collect()
    tracemalloc.start()
    fn(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**20, n


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_questions.json"
        records = _make_file(path)
        size_mb = path.stat().st_size / 2**20
        eager_s, eager_mb, n1 = _measure(_eager, path)
        stream_s, stream_mb, n2 = _measure(_stream, path)
    assert n1 == n2
    return {
        "name": "lamp_io_streaming",
        "figure": "peak memory, streaming / json.load",
        "ratio": stream_mb / eager_mb,
        "target": "<= 0.25",
        "details": {
            "file_mb": round(size_mb, 1), "records": records,
            "json_load": {"seconds": round(eager_s, 3), "peak_mb": round(eager_mb, 1)},
            "streaming": {"seconds": round(stream_s, 3), "peak_mb": round(stream_mb, 1)},
            "time_ratio_streaming_over_json_load": round(stream_s / eager_s, 3),
        },
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "peak_mb", "peak memory (MiB)"), (axes[1], "seconds", "time (s)")):
        ax.bar(["json.load", "streaming"], [d["json_load"][key], d["streaming"][key]], color=["#999", "#2a7"])
        ax.set_title(label)
    fig.suptitle(f"LaMP questions file, {d['file_mb']} MiB, {d['records']} records")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
