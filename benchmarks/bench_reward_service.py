"""The reward service under load: batching vs one item per request, and the cost of serving.

One run, one Ray cluster, two Serve applications of the same PRMU checkpoint side by side:

- ``/batched``: the service as shipped. Clients send what a rollout worker sends, one GRPO group
  (``GROUP`` responses to one prompt) per request, and ``@serve.batch`` merges concurrent
  requests into forward passes of up to 32 items.
- ``/single``: the same model served one item per request and per forward pass, the way a plain
  per-sample reward server works; clients send the same items one per request.

A second process drives each at concurrency 1, 8, 32 and 128 (``benchmarks/loadgen.py``). Then
the same model scores the same kind of items in-process, 32 at a time, with no HTTP at all.

Figures: (a) items/s at c=32, batched / single (target >= 4); (b) items/s at c=32, batched
service / in-process forward passes of batch 32 (target >= 0.8), on a LaMP-2 load whose answers
repeat (so the encoder's cache answers most of each call), and again with the PRMU reading the
reasoning too, which turns a cheap, overhead-bound model into a compute-bound one; (c) the same on
the load RL sends (:func:`_rollout_payloads`): every task's synthetic users with their whole
profiles, G = 8 teacher-written tagged responses per request, each generation answer new text, with
each group's latency p50/p99; (d) on that load with each user met once, a scorer that preloads its
checkpoint's embeddings (``embeddings.pt``, as the PRMU step writes them) against one that starts cold.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.loadgen import run_process

LEVELS = (1, 8, 32, 128)
GROUP = 8
DURATION = float(os.environ.get("TAGPR_BENCH_SECONDS", "8"))
REASONING = ("<examine_examples>Past films {i}: {a}; {b}.</examine_examples><identify_patterns>The user tags "
             "{t} whenever it appears.</identify_patterns><infer_preference>Prefers {t}.</infer_preference>"
             "<compare_options>{t} against the other themes of this film.</compare_options><answer>{t}</answer>")


def _payloads(group: int) -> list[dict]:
    from tagpr.config import SyntheticConfig
    from tagpr.lamp.synthetic import generate_split

    split = generate_split("LaMP_2", 1, 16, SyntheticConfig(seed=7, users={"b": 16}, questions_per_user=4,
                                                             profile_size=8))
    out = []
    for q in split.questions:
        gold = split.golds[q["id"]]
        p = q["profile"]
        response = REASONING.replace("{a}", p[0]["description"]).replace("{b}", p[1]["description"])
        item = {"task": "LaMP_2", "input": q["input"], "profile": p, "response": response.replace("{t}", gold)}
        out.append({"items": [{**item, "response": item["response"].replace("{i}", f"{{i}}-{k}")}
                              for k in range(group)]})
    return out


def _rollout_payloads(tmp: Path, users: int = 16, group: int = 8) -> list[dict]:
    """What a rollout worker sends: per task, one question of each of ``users`` synthetic users with its
    whole profile, and ``group`` responses that the programmatic teacher writes and the embedding
    labeler tags (as in the chains step; some answers wrong). A ``{i}`` closes every generation answer,
    as RL's samples are new text; classification answers repeat, as RL's do."""
    import random

    from tagpr.chains.labelers import EmbeddingLabeler
    from tagpr.chains.teachers import ProgrammaticTeacher, split_answer
    from tagpr.config import load_config
    from tagpr.lamp.io import load_split
    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.lamp.tasks import get_task

    cfg = load_config("configs/demo.yaml", [f"data.root={tmp / 'data'}", f"data.synthetic.users={{train: {users}}}",
                                            "data.synthetic.questions_per_user=1", "chains.mistake_rate=0.3"])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    teacher, labeler = ProgrammaticTeacher.from_config(cfg), EmbeddingLabeler.from_config(cfg, None)
    out = []
    for task in cfg.data.tasks:
        fresh = get_task(task).task_type == "generation"
        for q in load_split(cfg.data.root, task, cfg.data.train_split).questions:
            samples = [split_answer(teacher.write(q, random.Random(f"{q.id}-{k}"))) for k in range(group)]
            responses = labeler.label([(r, f"{a} {{i}}" if fresh else a) for r, a in samples])
            out.append({"items": [{"task": task, "input": q.input, "profile": list(q.profile), "response": r}
                                  for r in responses]})
    random.Random(0).shuffle(out)  # tasks interleaved, as a rollout batch mixes them
    return out


def _in_process(checkpoint_dir: Path, payloads: list[dict], batch: int, seconds: float) -> dict:
    """Items/s of the PRMU scoring the same requests in-process, ``batch`` items per forward pass, each
    request filled as the load generator fills it (a fresh ``{i}`` per request)."""
    from benchmarks.loadgen import fill_payload
    from tagpr.config import load_config
    from tagpr.lamp.io import Prompt
    from tagpr.prmu.features import example_from_judged
    from tagpr.prmu.scorer import PRMUScorer
    from tagpr.rewards import RewardInput, judge
    from tagpr.tags import TagSet

    scorer = PRMUScorer.load(checkpoint_dir)
    tags = TagSet(load_config().tags)
    n = 0

    def one_batch() -> int:
        nonlocal n
        examples = []
        while len(examples) < batch:
            n += 1
            for it in fill_payload(payloads[n % len(payloads)], n)["items"]:
                j = judge(tags, RewardInput(Prompt(str(n), it["task"], it["input"], tuple(it["profile"])),
                                            it["response"]))
                examples.append(example_from_judged(j, scorer.include_reasoning))
        scorer.score_examples(examples)
        return len(examples)

    while n < len(payloads):  # every request once: the service has seen them all in its earlier levels
        one_batch()
    items, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        items += one_batch()
    return {"batch": batch, "items_per_s": items / (time.perf_counter() - start)}


def _variant(reasoning: bool, port: int, tmp: Path, payloads: dict[str, list[dict]] | None = None,
             tag: str | None = None, store: Path | None = None) -> dict:
    """Deploy an app per payload set (default: LaMP-2 groups ``batched``, and their items one per
    request to an unbatched app, ``single``) for one PRMU config, drive them, and measure the
    in-process baseline on the batched requests. With ``store`` (RL's load) the checkpoint carries
    the profiles' embeddings, as the PRMU step's does, so that service and in-process scorer both
    start with them (the LaMP-2 load repeats its texts and warms up)."""
    from ray import serve

    from services.reward.deploy import deploy
    from tagpr.config import load_config
    from tagpr.prmu import checkpoint

    tag = tag or ("reasoning" if reasoning else "answer")
    cfg = load_config(None, [f"prmu.include_reasoning={str(reasoning).lower()}", "service.max_batch_size=32",
                             "service.batch_wait_timeout_s=0.005", "service.min_replicas=1",
                             "service.max_replicas=1", "service.limits.max_batch_items=64"])
    ckpt = tmp / f"prmu-{tag}"
    version = checkpoint.save(checkpoint.build_net(cfg.prmu, 384, 0), ckpt, cfg.prmu, "minilm", 384, {})
    if store:
        shutil.copy(store, ckpt / checkpoint.EMBEDDINGS)
    payloads = payloads or {"batched": _payloads(GROUP), "single": _payloads(1)}
    levels: dict[str, list[dict]] = {}
    for app, body in payloads.items():
        name = f"bench-{tag}-{app}"
        deploy(cfg, str(ckpt), token_env="TAGPR_BENCH_NO_TOKEN", batching=app == "batched", name=name,
               route_prefix=f"/{name}")
        file = tmp / f"{name}.json"
        file.write_text(json.dumps(body))
        url = f"http://127.0.0.1:{port}/{name}/v1/score"
        run_process(url, file, concurrency=8, seconds=2.0)  # warm-up
        levels[app] = [run_process(url, file, concurrency=c, seconds=DURATION) for c in LEVELS]
        serve.delete(name)
        for r in levels[app]:
            print(f"  {tag:9s} {app:8s} c={r['concurrency']:<4d} {r['items_per_s']:7.1f} items/s  "
                  f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)
    raw = _in_process(ckpt, payloads["batched"], cfg.service.max_batch_size, DURATION)
    print(f"  {tag:9s} in-process batch {raw['batch']}: {raw['items_per_s']:.1f} items/s", flush=True)
    at32 = {app: next(r for r in rs if r["concurrency"] == 32) for app, rs in levels.items()}
    return {"levels": levels, "in_process": raw, "model_version": version, "include_reasoning": reasoning,
            "group_size": GROUP, "seconds_per_level": DURATION, "requests": len(payloads["batched"]),
            "p50_ms_at_32_batched": at32["batched"]["p50_ms"], "p99_ms_at_32_batched": at32["batched"]["p99_ms"],
            "errors": sum(sum(r["errors"].values()) for rs in levels.values() for r in rs),
            "batching_ratio": at32["batched"]["items_per_s"] / at32["single"]["items_per_s"] if "single" in at32
            else None, "overhead_ratio": at32["batched"]["items_per_s"] / raw["items_per_s"]}


def _profile_store(tmp: Path, payloads: list[dict], max_length: int) -> Path:
    """The ``embeddings.pt`` the PRMU step would leave in a checkpoint: here the payloads' profile
    items and inputs (and the empty answer), embedded once for every app that preloads them."""
    from tagpr.prmu.encoder import SentenceEncoder
    from tagpr.prmu.features import embed_examples, make_example

    encoder = SentenceEncoder("minilm", max_length)
    embed_examples([make_example(it["task"], it["profile"], it["input"], "") for p in payloads for it in p["items"]],
                   encoder)
    path = tmp / "profile-embeddings.pt"
    encoder.save_cache(path)
    return path


def _first_contact(port: int, tmp: Path, payloads: list[dict], store: Path) -> dict:
    """RL meets most users for the first time in a reward call. The same RL load, each request once, to
    a scorer that starts cold and to one that preloads the embeddings its checkpoint carries
    (``embeddings.pt``: here the payloads' profile items and inputs, the texts the PRMU step embeds)."""
    from ray import serve

    from services.reward.deploy import deploy
    from tagpr.config import load_config
    from tagpr.prmu import checkpoint

    cfg = load_config(None, ["service.max_batch_size=32", "service.batch_wait_timeout_s=0.005",
                             "service.min_replicas=1", "service.max_replicas=1", "service.limits.max_batch_items=64"])
    file = tmp / "first-contact.json"
    file.write_text(json.dumps(payloads))
    levels = {}
    for app in ("cold", "preloaded"):
        ckpt = tmp / f"prmu-{app}"
        checkpoint.save(checkpoint.build_net(cfg.prmu, 384, 0), ckpt, cfg.prmu, "minilm", 384, {})
        if app == "preloaded":
            shutil.copy(store, ckpt / checkpoint.EMBEDDINGS)
        name = f"bench-first-contact-{app}"
        deploy(cfg, str(ckpt), token_env="TAGPR_BENCH_NO_TOKEN", name=name, route_prefix=f"/{name}")
        levels[app] = [run_process(f"http://127.0.0.1:{port}/{name}/v1/score", file, concurrency=8,
                                   seconds=DURATION)]
        serve.delete(name)
        r = levels[app][0]
        print(f"  first contact {app:9s} c=8 {r['items_per_s']:7.1f} items/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)
    return {"levels": levels, "requests": len(payloads), "group_size": GROUP, "seconds": DURATION,
            "errors": sum(sum(rs[0]["errors"].values()) for rs in levels.values()),
            "ratio": levels["preloaded"][0]["items_per_s"] / levels["cold"][0]["items_per_s"]}


def run() -> list[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster on loopback
    import ray
    from ray import serve

    from actors.cluster import free_port
    from tagpr.config import load_config

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            answer = _variant(False, port, Path(tmp))
            reasoning = _variant(True, port, Path(tmp))
            rl_load = _rollout_payloads(Path(tmp))
            store = _profile_store(Path(tmp), rl_load, load_config().prmu.max_length)
            rollout = _variant(False, port, Path(tmp), {"batched": rl_load}, tag="rollout", store=store)
            first = _first_contact(port, Path(tmp), rl_load, store)
    finally:
        serve.shutdown()
        ray.shutdown()
    return [
        {"name": "reward_service_batching", "figure": "items/s at c=32, batched / one item per request",
         "ratio": answer["batching_ratio"], "target": ">= 4", "details": answer},
        {"name": "reward_service_overhead", "figure": "items/s at c=32, batched service / in-process batch 32",
         "ratio": answer["overhead_ratio"], "target": ">= 0.8", "details": answer},
        {"name": "reward_service_overhead_reasoning",
         "figure": "same, PRMU reading the reasoning (compute-bound)",
         "ratio": reasoning["overhead_ratio"], "target": ">= 0.8", "details": reasoning},
        {"name": "reward_service_overhead_rollout",
         "figure": "same, on RL's load: every task's users and profiles, G = 8 tagged responses, new answers",
         "ratio": rollout["overhead_ratio"], "target": ">= 0.8", "details": rollout},
        {"name": "reward_service_preloaded_embeddings",
         "figure": "items/s on RL's load, each user met once (c=8), scorer preloading its checkpoint's "
                   "embeddings / starting cold",
         "ratio": first["ratio"], "target": "> 1", "details": first},
    ]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for app, rs in d["levels"].items():
        style = "s--" if app in ("single", "cold") else "o-"
        axes[0].plot([r["concurrency"] for r in rs], [r["items_per_s"] for r in rs], style, label=app)
        axes[1].plot([r["concurrency"] for r in rs], [r["p99_ms"] for r in rs], style, label=app)
    if "in_process" in d:
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
