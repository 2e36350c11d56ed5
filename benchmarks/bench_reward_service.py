"""The reward service under load: batching vs one item per request, and the cost of serving.

One run, one Ray cluster, two Serve applications of the same PRMU checkpoint side by side:
``/batched`` (``@serve.batch``, up to 32 items a forward pass) and ``/single`` (one item per
forward pass, the way a plain OpenRLHF-style reward server works). A second process sends
single-item ``/v1/score`` requests at concurrency 1, 8, 32 and 128. Then the same model scores
the same kind of items in-process, 32 at a time, with no HTTP at all.

Figures: (a) items/s at c=32, batched / single (target >= 4); (b) items/s at c=32, batched
service / in-process forward passes of batch 32 (target >= 0.8). The PRMU reads the reasoning
too (``prmu.include_reasoning``), as it does when it scores full tagged responses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEVELS = (1, 8, 32, 128)
DURATION = float(os.environ.get("TAGPR_BENCH_SECONDS", "8"))
REASONING = ("<examine_examples>Past films {i}: {a}; {b}.</examine_examples><identify_patterns>The user tags "
             "{t} whenever it appears.</identify_patterns><infer_preference>Prefers {t}.</infer_preference>"
             "<compare_options>{t} against the other themes of this film.</compare_options><answer>{t}</answer>")


def _payloads() -> list[dict]:
    from tagpr.config import SyntheticConfig
    from tagpr.lamp.synthetic import generate_split

    split = generate_split("LaMP_2", 1, 16, SyntheticConfig(seed=7, users={"b": 16}, questions_per_user=4,
                                                             profile_size=8))
    out = []
    for q in split.questions:
        gold = split.golds[q["id"]]
        p = q["profile"]
        response = REASONING.replace("{a}", p[0]["description"]).replace("{b}", p[1]["description"])
        out.append({"items": [{"task": "LaMP_2", "input": q["input"], "profile": p,
                               "response": response.replace("{t}", gold)}]})
    return out


def _load(url: str, payload_file: Path, concurrency: int, duration: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--payloads", str(payload_file),
           "--concurrency", str(concurrency), "--duration", str(duration)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _in_process(checkpoint_dir: Path, payloads: list[dict], batch: int, seconds: float) -> dict:
    from tagpr.config import load_config
    from tagpr.prmu.features import example_from_judged
    from tagpr.prmu.scorer import PRMUScorer
    from tagpr.rewards import RewardInput, judge
    from tagpr.tags import TagSet

    scorer = PRMUScorer.load(checkpoint_dir)
    tags = TagSet(load_config().tags)
    items, n, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        examples = []
        for _ in range(batch):
            n += 1
            it = json.loads(json.dumps(payloads[n % len(payloads)]["items"][0]).replace("{i}", f"raw{n}"))
            j = judge(tags, RewardInput(it["task"], it["response"], "", it["input"], tuple(it["profile"])))
            examples.append(example_from_judged(j, scorer.include_reasoning))
        scorer.score_examples(examples)
        items += batch
    return {"batch": batch, "items_per_s": items / (time.perf_counter() - start)}


def run() -> list[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster on loopback
    import ray
    from ray import serve

    from services.reward.deploy import deploy
    from tagpr.config import load_config
    from tagpr.prmu import checkpoint
    from tests.integration.conftest import free_port

    cfg = load_config(None, ["prmu.include_reasoning=true", "service.max_batch_size=32",
                             "service.batch_wait_timeout_s=0.005", "service.min_replicas=1",
                             "service.max_replicas=1", "service.limits.max_batch_items=64"])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "prmu"
        net = checkpoint.build_net(cfg.prmu, 384, 0)
        version = checkpoint.save(net, ckpt, cfg.prmu, "minilm", 384, {})
        payload_file = Path(tmp) / "payloads.json"
        payloads = _payloads()
        payload_file.write_text(json.dumps(payloads))
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(cfg, str(ckpt), token_env="TAGPR_BENCH_NO_TOKEN", name="bench-batched", route_prefix="/batched")
        deploy(cfg, str(ckpt), token_env="TAGPR_BENCH_NO_TOKEN", batching=False, name="bench-single",
               route_prefix="/single")
        base = f"http://127.0.0.1:{port}"
        levels: dict[str, list[dict]] = {}
        for app in ("batched", "single"):
            _load(f"{base}/{app}/v1/score", payload_file, 8, 2.0)  # warm-up
            levels[app] = [_load(f"{base}/{app}/v1/score", payload_file, c, DURATION) for c in LEVELS]
            for r in levels[app]:
                print(f"  {app:8s} c={r['concurrency']:<4d} {r['items_per_s']:7.1f} items/s  "
                      f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)
        serve.shutdown()
        ray.shutdown()
        raw = _in_process(ckpt, payloads, cfg.service.max_batch_size, DURATION)
    at32 = {app: next(r for r in rs if r["concurrency"] == 32) for app, rs in levels.items()}
    errors = sum(sum(r["errors"].values()) for rs in levels.values() for r in rs)
    details = {"levels": levels, "in_process": raw, "model_version": version, "seconds_per_level": DURATION,
               "p99_ms_at_32_batched": at32["batched"]["p99_ms"], "errors": errors}
    return [
        {"name": "reward_service_batching", "figure": "items/s at c=32, batched / one item per request",
         "ratio": at32["batched"]["items_per_s"] / at32["single"]["items_per_s"], "target": ">= 4",
         "details": details},
        {"name": "reward_service_overhead", "figure": "items/s at c=32, batched service / in-process batch 32",
         "ratio": at32["batched"]["items_per_s"] / raw["items_per_s"], "target": ">= 0.8", "details": details},
    ]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for app, style in (("batched", "o-"), ("single", "s--")):
        rs = d["levels"][app]
        axes[0].plot([r["concurrency"] for r in rs], [r["items_per_s"] for r in rs], style, label=app)
        axes[1].plot([r["concurrency"] for r in rs], [r["p99_ms"] for r in rs], style, label=app)
    axes[0].axhline(d["in_process"]["items_per_s"], color="#999", ls=":", label="in-process, batch 32")
    for ax, title in ((axes[0], "items/s"), (axes[1], "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['figure']}: {result['ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
