"""The learning benchmark (``make bench-learning``): does RL improve the SFT policy, above noise?

Per seed, SFT trains the tiny policy on the tagged chains (the demo's settings, this seed's data
order), then each RL variant trains from that SFT policy with the same number of learner steps:

- ``format_task``: format x task only, one stage;
- ``guided_tags``: format x task and the tag reward, one stage;
- ``guided_tags_prmu``: the guided stage's full reward (format x task, tags, PRMU), one stage;
- ``tagpr``: guided, then exploratory (format x task only): the method.

Every policy is scored on every dev question (greedy). The figure is the dev task score of
``tagpr`` over SFT's, as the mean over seeds of the paired difference (same SFT policy, same
questions) relative to SFT's mean, with the 95% t-interval of that mean over seeds
(:func:`tagpr.stats.seed_interval`); each seed also gets a stratified paired-bootstrap interval
over questions. The PRMU's pairwise accuracy on held-out users against its separately trained
user-blind model is reported beside it. JSON and PNG in ``benchmarks/results/learning.*``.

    python -m benchmarks.learning [--seeds 0,1,2] [--config configs/demo.yaml] [--set KEY=VALUE ...]
    python -m benchmarks.learning --resume runs/<name>-bench-<time>     # continue a cut-off run

A run takes hours on a small CPU machine, so every finished part is kept in its directory: the PRMU
(``prmu_eval.json``), each seed's SFT policy and its dev scores (``seed-<n>/sft_dev.json``), each
variant's dev scores (``seed-<n>/<variant>/dev_eval.json``). ``--resume`` keeps those, continues a
variant cut off mid-run from its newest learner checkpoint, and runs the rest; the settings must be
the ones the run started with (``bench.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from benchmarks.run import RESULTS, machine

if TYPE_CHECKING:
    from tagpr.config import TagPRConfig

GUIDED = {"format_task": 1.0, "tag": 0.2, "prmu": 0.3}
TARGET_RELATIVE = 0.10


def variants(guided_steps: int, exploratory_steps: int) -> dict[str, list[dict[str, Any]]]:
    """RL stage lists with the same learner steps in all; the method is ``tagpr``."""
    total = guided_steps + exploratory_steps
    one = lambda weights: [{"name": "guided", "steps": total, "weights": weights}]  # noqa: E731
    return {
        "format_task": one({"format_task": 1.0}),
        "guided_tags": one({"format_task": 1.0, "tag": 0.2}),
        "guided_tags_prmu": one(GUIDED),
        "tagpr": [{"name": "guided", "steps": guided_steps, "weights": GUIDED},
                  {"name": "exploratory", "steps": exploratory_steps, "weights": {"format_task": 1.0}}],
    }


def _scores(evaluation: dict) -> dict[str, dict[str, float]]:
    return {t: v["per_question"] for t, v in evaluation["tasks"].items()}


def _rewards(run_dir: Path) -> list[dict[str, float]]:
    """The learner's reward curve; a step retrained after a resume counts as its last run."""
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    by_step = {m["step"]: {"step": m["step"], "reward_mean": m["reward_mean"], "format": m.get("reward/format", 0.0),
                           "task": m.get("reward/task", 0.0), "clip_frac": m.get("clip_frac", 0.0)}
               for m in lines if m["prefix"] == "learner"}
    return [by_step[step] for step in sorted(by_step)]


def summarize(per_seed: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per variant: each seed's paired difference RL - SFT (dev task score), their mean with the 95%
    t-interval over seeds, and that mean relative to SFT's mean score."""
    from tagpr.stats import seed_interval

    out = {}
    sft = [s["sft"]["task_score"] for s in per_seed.values()]
    for name in names:
        diffs = [s["rl"][name]["task_score"] - s["sft"]["task_score"] for s in per_seed.values()]
        interval = seed_interval(diffs)
        mean_sft = sum(sft) / len(sft)
        out[name] = {"differences": diffs, "mean_difference": interval.estimate, "low": interval.low,
                     "high": interval.high, "relative": interval.estimate / mean_sft if mean_sft else None,
                     "task_score": [s["rl"][name]["task_score"] for s in per_seed.values()],
                     "format_valid": [s["rl"][name]["format_valid"] for s in per_seed.values()]}
    return out


def resume_mismatch(bench_dir: Path, settings: dict[str, Any]) -> str | None:
    """Why ``bench_dir`` cannot be continued with ``settings`` (config, overrides, steps), or None."""
    recorded = bench_dir / "bench.json"
    if not recorded.is_file():
        return f"{bench_dir} is not a learning-benchmark run (no bench.json)"
    before = json.loads(recorded.read_text())
    for key, value in settings.items():
        if before.get(key) != value:
            return f"{bench_dir} ran with {key} {before.get(key)!r}, not {value!r}; resume it with its own settings"
    return None


def kept(marker: Path, work: Callable[[], dict[str, Any]], seconds: dict[str, float], key: str) -> dict[str, Any]:
    """``work()``'s result, run once: written to ``marker`` with its wall time when it finishes, read
    back (time included) on a resumed run."""
    if marker.is_file():
        done = json.loads(marker.read_text())
    else:
        t0 = time.perf_counter()
        done = {**work(), "seconds": round(time.perf_counter() - t0, 1)}
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(done))
        tmp.replace(marker)
    seconds[key] = done["seconds"]
    return done


def _sft_part(cfg: TagPRConfig, run_dir: Path) -> dict[str, Any]:
    """A seed's SFT policy (into ``run_dir/policy``) and its dev scores (every question, greedy)."""
    from actors.controller import evaluate_remote
    from tagpr.jobs import sft
    from tagpr.jobs.pipeline import with_policy

    policy = str(Path(sft.train(cfg, run_dir=_fresh(run_dir), evaluate=False).policy).resolve())
    return {"evaluation": evaluate_remote(policy, with_policy(cfg, policy), 0, sampled=False, label="SFT")}


def _rl_part(cfg: TagPRConfig, run_dir: Path, name: str) -> dict[str, Any]:
    """One RL variant from the seed's SFT policy, and its dev scores; a run cut off after a learner
    checkpoint continues from it."""
    from actors.controller import evaluate_remote
    from tagpr.jobs import rl

    if any((run_dir / "checkpoints").glob("step-*")):
        report = rl.train(cfg, log=lambda _: None, resume=run_dir)
    else:
        report = rl.train(cfg, log=lambda _: None, run_dir=_fresh(run_dir))
    return {"evaluation": evaluate_remote(str(Path(report.policy).resolve()), cfg, 0, sampled=False, label=name)}


def _fresh(path: Path) -> Path:
    """``path`` emptied of what a cut-off run left there."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def _steps(text: str) -> tuple[int, int]:
    try:
        guided, exploratory = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GUIDED,EXPLORATORY step counts, got {text!r}") from None
    if guided < 1 or exploratory < 0:
        raise argparse.ArgumentTypeError(f"need at least one guided step and no negative count, got {text!r}")
    return guided, exploratory


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise argparse.ArgumentTypeError(f"the interval is over seeds: need two or more different ones, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", type=_seeds, default="0,1,2")
    parser.add_argument("--steps", type=_steps, default=None,
                        help="guided,exploratory learner steps of the method (default: the config's two stages)")
    parser.add_argument("--variants", default="", help="comma-separated subset of the RL variants")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", type=Path, default=None,
                        help="a bench run directory to continue (its finished parts are kept)")
    args = parser.parse_args(argv)

    from actors.cluster import connect
    from tagpr.config import load_config, new_run_dir
    from tagpr.jobs.pipeline import run_pipeline, with_policy
    from tagpr.jobs.prmu import PRMUResult
    from tagpr.stats import stratified_paired_bootstrap

    start = time.perf_counter()
    seeds = args.seeds
    cfg = load_config(args.config, ["rollout.reward_via=local", "rl.eval_limit=0", *args.overrides])
    if not args.steps and len(cfg.rl.stages) != 2:
        parser.error(f"{args.config} has {len(cfg.rl.stages)} RL stages, not guided and exploratory: pass --steps")
    guided, exploratory = args.steps or (stage.steps for stage in cfg.rl.stages)
    runs = variants(guided, exploratory)
    wanted = set(args.variants.split(",")) if args.variants else set(runs)
    if unknown := sorted(wanted - set(runs)):
        parser.error(f"--variants: unknown {unknown}; the variants are {list(runs)}")
    names = [n for n in runs if n in wanted]
    settings = {"config": args.config, "overrides": args.overrides, "steps": [guided, exploratory]}
    if args.resume:
        if mismatch := resume_mismatch(args.resume, settings):
            parser.error(f"--resume: {mismatch}")
        bench_dir = args.resume
    else:
        bench_dir = new_run_dir(cfg, "bench")
        (bench_dir / "bench.json").write_text(json.dumps(settings, indent=1))
    connect(cfg.cluster)
    shared_steps = ["data", "model", "prmu", "chains"]
    if (bench_dir / "prmu_eval.json").is_file():  # kept from the run being resumed
        shared_steps.remove("prmu")
    shared = run_pipeline(cfg, shared_steps, run_dir=bench_dir)
    prmu = PRMUResult(**json.loads((bench_dir / "prmu_eval.json").read_text()))
    seconds: dict[str, float] = {**shared.seconds, "prmu": prmu.seconds}
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        seeded = load_config(args.config, ["rollout.reward_via=local", "rl.eval_limit=0", f"run.seed={seed}",
                                           f"rollout.engine.seed={seed}", *args.overrides])
        seed_dir = bench_dir / f"seed-{seed}"
        sft_done = kept(seed_dir / "sft_dev.json", partial(_sft_part, seeded, seed_dir / "sft"), seconds,
                        f"sft seed {seed}")
        base = with_policy(seeded, str(seed_dir / "sft" / "policy"))  # the path is not kept: a run dir can move
        base = base.model_copy(update={"prmu": base.prmu.model_copy(update={"checkpoint": prmu.checkpoint})})
        entry: dict[str, Any] = {"sft": sft_done["evaluation"], "rl": {}, "rewards": {}, "bootstrap": {}}
        print(f"seed {seed}: SFT dev task score {entry['sft']['task_score']:.3f}", flush=True)
        for name in names:
            variant = base.model_copy(update={"rl": base.rl.model_validate(
                {**base.rl.model_dump(), "stages": runs[name]})})
            run_dir = seed_dir / name
            key = f"{name} seed {seed}"
            entry["rl"][name] = kept(run_dir / "dev_eval.json", partial(_rl_part, variant, run_dir, name), seconds,
                                     key)["evaluation"]
            entry["rewards"][name] = _rewards(run_dir)
            entry["bootstrap"][name] = asdict(stratified_paired_bootstrap(
                _scores(entry["rl"][name]), _scores(entry["sft"]), seed=seed))
            print(f"seed {seed}: {name} dev task score {entry['rl'][name]['task_score']:.3f} "
                  f"({seconds[key]:.0f} s)", flush=True)
        per_seed[str(seed)] = entry
    rows = summarize(per_seed, names)
    method = rows.get("tagpr") or rows[names[-1]]
    met = bool(method["relative"] is not None and method["relative"] >= TARGET_RELATIVE and method["low"] > 0)
    blind_gap = prmu.prmu["all"] - prmu.user_blind["all"]
    result = {
        "name": "learning", "figure": "dev task score, TagPR RL over SFT (mean over seeds)",
        "ratio": round(1 + method["relative"], 4) if method["relative"] is not None else 0.0,
        "target": f">= {1 + TARGET_RELATIVE}", "met": met,
        "details": {
            "rows": rows, "seeds": seeds, "steps": {"guided": guided, "exploratory": exploratory},
            "dev_questions_per_task": {t: v["n"] for t, v in next(iter(per_seed.values()))["sft"]["tasks"].items()},
            "sft_task_score": [s["sft"]["task_score"] for s in per_seed.values()],
            "prmu": {"prmu": prmu.prmu, "user_blind": prmu.user_blind, "gap": blind_gap,
                     "target_gap": 0.15, "met": blind_gap >= 0.15},
            "per_seed": {k: {"sft": {"task_score": v["sft"]["task_score"], "format_valid": v["sft"]["format_valid"],
                                     "tasks": {t: {m: x for m, x in s.items() if m not in ("per_question", "example")}
                                               for t, s in v["sft"]["tasks"].items()}},
                             "rl": {n: {"task_score": e["task_score"], "format_valid": e["format_valid"],
                                        "tasks": {t: {m: x for m, x in s.items() if m not in ("per_question",
                                                                                             "example")}
                                                  for t, s in e["tasks"].items()}}
                                    for n, e in v["rl"].items()},
                             "bootstrap": v["bootstrap"], "rewards": v["rewards"]} for k, v in per_seed.items()},
            "config": args.config, "overrides": args.overrides, "run_dir": str(bench_dir), "seconds": seconds,
            "total_seconds": round(sum(seconds.values())), "resumed": bool(args.resume),
            "this_invocation_seconds": round(time.perf_counter() - start),
        },
        "machine": machine(), "date": dt.date.today().isoformat(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learning.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "learning.png")
    for name, row in rows.items():
        rel = f"{row['relative']:+.1%}" if row["relative"] is not None else "n/a"
        print(f"{name}: RL - SFT {row['mean_difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] ({rel})")
    print(f"PRMU {prmu.prmu['all']:.3f} vs user-blind {prmu.user_blind['all']:.3f}")
    return 0 if met else 1


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    names = list(d["rows"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        for j, entry in enumerate(d["per_seed"].values()):
            curve = entry["rewards"][name]
            ax1.plot([c["step"] for c in curve], [c["task"] for c in curve], color=colors[i % len(colors)],
                     alpha=0.7, label=name if j == 0 else None)
    ax1.set_xlabel("learner step")
    ax1.set_ylabel("training reward: task score of samples")
    ax1.set_title(f"training curves, one line per seed ({len(d['seeds'])} seeds)")
    ax1.legend(fontsize=7)
    for i, name in enumerate(names):
        row = d["rows"][name]
        ax2.errorbar([i], [row["mean_difference"]], yerr=[[row["mean_difference"] - row["low"]],
                                                          [row["high"] - row["mean_difference"]]],
                     fmt="o", capsize=6, color=colors[i % len(colors)])
        ax2.scatter([i] * len(row["differences"]), row["differences"], color="grey", s=12, zorder=3)
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax2.set_xlim(-0.5, len(names) - 0.5)
    n = sorted(set(d["dev_questions_per_task"].values()))
    ax2.set_ylabel(f"dev task score, RL - SFT ({'/'.join(map(str, n))} questions per task)")
    ax2.set_title("paired difference per seed (grey), mean and 95% interval")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
