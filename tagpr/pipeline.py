"""The main job as a sequence of named steps, each recorded in the run directory.

``tagpr run CONFIG`` creates ``runs/<name>-run-<time>/`` with the resolved config, runs the
configured steps in order and writes ``summary.json`` (each step's outputs and seconds). Steps
are registered by name; a step whose output already exists reuses it, so rerunning is cheap.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from tagpr.config import TagPRConfig, new_run_dir
from tagpr.registry import Registry


@dataclass
class RunContext:
    cfg: TagPRConfig
    run_dir: Path
    log: Callable[[str], None] = print
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # each finished step's wall time


Step = Callable[[RunContext], dict[str, Any]]
STEPS: Registry[Step] = Registry("pipeline step")


@STEPS.register("data")
def step_data(ctx: RunContext) -> dict[str, Any]:
    """Synthetic LaMP-format users (kept if present), and the profile-reader vs user-blind baselines."""
    from tagpr.lamp.io import split_paths
    from tagpr.lamp.synthetic import dev_baselines, write_synthetic

    cfg = ctx.cfg
    root = Path(cfg.data.root)
    missing = [t for t in cfg.data.tasks
               if not all(p.exists() for s in cfg.data.synthetic.users for p in split_paths(root, t, s))]
    if missing:
        write_synthetic(root, cfg.data.synthetic, missing)
        ctx.log(f"data: wrote synthetic users for {', '.join(missing)} under {root}")
    else:
        ctx.log(f"data: reusing {root}")
    d = cfg.data
    baselines = dev_baselines(root, d.tasks, d.train_split, d.dev_split, d.skip_invalid)
    (ctx.run_dir / "baselines.json").write_text(json.dumps(baselines, indent=1))
    return {"root": str(root), "written": missing, "baselines": baselines}


@STEPS.register("model")
def step_model(ctx: RunContext) -> dict[str, Any]:
    """The embedded tiny policy (built if the configured folder holds no model)."""
    from tagpr.models import build_tiny_policy

    path = Path(ctx.cfg.model.policy)
    if (path / "config.json").exists():
        ctx.log(f"model: reusing {path}")
        return {"policy": str(path), "built": False}
    build_tiny_policy(ctx.cfg.model, ctx.cfg.tags, path)
    ctx.log(f"model: built the tiny policy in {path}")
    return {"policy": str(path), "built": True}


@STEPS.register("prmu")
def step_prmu(ctx: RunContext) -> dict[str, Any]:
    """Train the PRMU on Ray Train into ``<run dir>/prmu`` and evaluate it on held-out users."""
    from tagpr.jobs.prmu import train

    result = train(ctx.cfg, log=ctx.log, run_dir=ctx.run_dir)
    ctx.log(f"prmu: pairwise accuracy {result['prmu']['all']:.3f} vs user-blind {result['user_blind']['all']:.3f}")
    return result


@STEPS.register("chains")
def step_chains(ctx: RunContext) -> dict[str, Any]:
    """Tagged chains on Ray Data into ``chains.out`` (resumes where an earlier run stopped)."""
    from tagpr.jobs.chains import generate

    return generate(ctx.cfg, log=ctx.log)


@STEPS.register("sft")
def step_sft(ctx: RunContext) -> dict[str, Any]:
    """SFT on the chains (Ray Train) into ``<run dir>/policy``, evaluated on dev before and after."""
    from tagpr.jobs.sft import train

    return train(ctx.cfg, log=ctx.log, run_dir=ctx.run_dir)


@STEPS.register("rl")
def step_rl(ctx: RunContext) -> dict[str, Any]:
    """Multi-stage asynchronous GRPO into ``<run dir>/rl`` from this run's SFT policy (else
    ``model.policy``), with this run's PRMU (else ``prmu.checkpoint``) behind the reward."""
    from tagpr.jobs.rl import train

    cfg = with_policy(ctx.cfg, ctx.results.get("sft", {}).get("policy") or ctx.cfg.model.policy)
    prmu = ctx.results.get("prmu", {}).get("checkpoint") or cfg.prmu.checkpoint
    cfg = cfg.model_copy(update={"prmu": cfg.prmu.model_copy(update={"checkpoint": prmu})})
    run_dir = ctx.run_dir / "rl"
    run_dir.mkdir(exist_ok=True)
    report = train(cfg, log=ctx.log, run_dir=run_dir)
    last = list(report["stages"])[-1]
    return {"policy": report["stages"][last]["policy"], "run_dir": str(run_dir), "stages": report["stages"],
            "evaluations": report["evaluations"], "seconds": report["seconds"]}


@STEPS.register("report")
def step_report(ctx: RunContext) -> dict[str, Any]:
    """``report.md``, ``report.json`` and PNGs: base, SFT and RL policies scored on the same dev
    questions (``run.report_eval_limit`` per task), reward and staleness over steps, tag distribution."""
    from actors.progress import dev_progress
    from tagpr.evaluation import evaluate_policy
    from tagpr.report import build_report, plot_report, read_metrics, render_markdown

    cfg = ctx.cfg
    limit = cfg.run.report_eval_limit
    sft, rl = ctx.results.get("sft", {}), ctx.results.get("rl", {})
    policies = {"base": sft.get("policy_in") or cfg.model.policy, "sft": sft.get("policy"), "rl": rl.get("policy")}
    # the SFT and RL steps already scored these policies; reused when on the same questions
    done = {}
    if cfg.sft.eval_limit == limit:
        done.update(base=sft.get("before"), sft=sft.get("after"))
    if cfg.rl.eval_limit == limit and rl.get("evaluations"):
        done["rl"] = list(rl["evaluations"].values())[-1]
    evaluations = {}
    for phase, policy in policies.items():
        if done.get(phase):
            evaluations[phase] = done[phase]
        elif policy:
            ctx.log(f"report: scoring the {phase} policy on dev")
            evaluations[phase] = evaluate_policy(str(Path(policy).resolve()), cfg, limit=limit,
                                                 on_task=dev_progress(phase))
    report = build_report(evaluations)
    rl_dir = Path(rl.get("run_dir", ctx.run_dir / "rl"))
    learner, rollout = (read_metrics(rl_dir / "metrics.jsonl", p) for p in ("learner", "rollout"))
    tags = ctx.results.get("chains", {}).get(cfg.data.train_split, {}).get("tag_distribution", {})
    plots = plot_report(report, learner, rollout, tags, ctx.run_dir)
    n = report["tasks"][0]["n"] if report["tasks"] else 0
    notes = [f"{n} dev questions per task, greedy decoding; relative improvement is (policy - base) / base, "
             "sign-flipped for MAE and RMSE; the average is over tasks (the paper's headline figure).",
             "Seconds per step: " + ", ".join(f"{k} {v:g}" for k, v in ctx.seconds.items()) + "."]
    (ctx.run_dir / "report.json").write_text(json.dumps({**report, "evaluations": evaluations}, indent=1))
    (ctx.run_dir / "report.md").write_text(render_markdown(report, f"TagPR run {ctx.run_dir.name}", notes, plots))
    ctx.log(f"report: {ctx.run_dir / 'report.md'}")
    return {"report": str(ctx.run_dir / "report.md"), "summary": report["summary"]}


def with_policy(cfg: TagPRConfig, policy: str | None) -> TagPRConfig:
    """``cfg`` starting from ``policy`` (an earlier step's output), or unchanged when there is none."""
    if not policy:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"policy": str(Path(policy).resolve())})})


class StepListener(Protocol):
    def start_step(self, name: str) -> None: ...

    def finish_step(self, name: str) -> None: ...


def run_pipeline(cfg: TagPRConfig, steps: list[str], log: Callable[[str], None] = print,
                 listener: StepListener | None = None) -> RunContext:
    funcs = [(name, STEPS.get(name)) for name in steps]  # unknown names fail before any work
    ctx = RunContext(cfg, new_run_dir(cfg, "run"), log)
    summary: dict[str, Any] = {"run_dir": str(ctx.run_dir), "steps": {}}
    for name, func in funcs:
        start = time.perf_counter()
        if listener:
            listener.start_step(name)
        out = func(ctx)
        if listener:
            listener.finish_step(name)
        ctx.results[name] = out
        ctx.seconds[name] = round(time.perf_counter() - start, 1)
        summary["steps"][name] = {"seconds": ctx.seconds[name], **out}
        (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return ctx
