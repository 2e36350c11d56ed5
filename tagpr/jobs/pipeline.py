"""The main job: the steps in ``run.steps`` (data, model, prmu, chains, sft, reference, rl, report),
each recorded in the run directory.

    python -m tagpr.jobs.pipeline [CONFIG] [--set k=v] [--steps a,b]      (also `tagpr run`)

``tagpr run CONFIG`` creates ``runs/<name>-run-<time>/`` with the resolved config, runs the
configured steps in order and writes ``summary.json`` (each step's outputs and seconds). Steps
are registered by name; a step whose output already exists reuses it, so rerunning is cheap.
Under ``ray job submit`` it joins the cluster it was submitted to (``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from tagpr.config import RESOLVED_NAME, TagPRConfig, new_run_dir
from tagpr.jobs import command
from tagpr.records import Record
from tagpr.registry import Registry
from tagpr.rl.result import RLResult

if TYPE_CHECKING:  # the jobs load torch, so each step imports its job only when it runs
    from tagpr.jobs.chains import ChainsResult
    from tagpr.jobs.prmu import PRMUResult
    from tagpr.jobs.sft import SFTResult


@dataclass
class RunContext:
    cfg: TagPRConfig
    run_dir: Path
    log: Callable[[str], None] = print
    results: dict[str, Any] = field(default_factory=dict)  # step name -> the Record it returned
    seconds: dict[str, float] = field(default_factory=dict)  # each finished step's wall time


Step = Callable[[RunContext], Record]
STEPS: Registry[Step] = Registry("pipeline step")


@dataclass(frozen=True, kw_only=True)
class DataResult(Record):
    """The data step: the data root, the tasks it wrote synthetic users for, the dev baselines."""

    root: str
    written: list[str]
    baselines: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ModelResult(Record):
    """The model step: the policy folder, and whether this run built it."""

    policy: str
    built: bool


@dataclass(frozen=True, kw_only=True)
class ReportResult(Record):
    """The report step: ``report.md``, and the headline and per-policy summary it shows."""

    report: str
    headline: dict[str, Any] | None  # None without an RL policy and a reference to compare
    summary: dict[str, Any]


@STEPS.register("data")
def step_data(ctx: RunContext) -> DataResult:
    """Synthetic LaMP-format users (kept if present and made with the same settings), and the
    profile-reader vs user-blind baselines."""
    from tagpr.lamp.io import split_paths
    from tagpr.lamp.synthetic import dev_baselines, stale_tasks, write_synthetic

    cfg = ctx.cfg
    root = Path(cfg.data.root)
    missing = [t for t in cfg.data.tasks
               if not all(p.exists() for s in cfg.data.synthetic.users for p in split_paths(root, t, s))]
    stale = [t for t in stale_tasks(root, cfg.data.synthetic, cfg.data.tasks) if t not in missing]
    if stale:
        ctx.log(f"data: {', '.join(stale)} under {root} were written with other data.synthetic settings; rewriting")
    missing += stale
    if missing:
        write_synthetic(root, cfg.data.synthetic, missing)
        ctx.log(f"data: wrote synthetic users for {', '.join(missing)} under {root}")
    else:
        ctx.log(f"data: reusing {root}")
    d = cfg.data
    baselines = dev_baselines(root, d.tasks, d.train_split, d.dev_split, d.skip_invalid)
    (ctx.run_dir / "baselines.json").write_text(json.dumps(baselines, indent=1))
    return DataResult(root=str(root), written=missing, baselines=baselines)


@STEPS.register("model")
def step_model(ctx: RunContext) -> ModelResult:
    """The embedded tiny policy (built if the configured folder holds no model)."""
    from tagpr.models import build_tiny_policy

    path = Path(ctx.cfg.model.policy)
    if (path / "config.json").exists():
        ctx.log(f"model: reusing {path}")
        return ModelResult(policy=str(path), built=False)
    build_tiny_policy(ctx.cfg.model, ctx.cfg.tags, path)
    ctx.log(f"model: built the tiny policy in {path}")
    return ModelResult(policy=str(path), built=True)


@STEPS.register("prmu")
def step_prmu(ctx: RunContext) -> PRMUResult:
    """Train the PRMU on Ray Train into ``<run dir>/prmu`` and evaluate it on held-out users."""
    from tagpr.jobs.prmu import train

    result = train(ctx.cfg, log=ctx.log, run_dir=ctx.run_dir)
    ctx.log(f"prmu: pairwise accuracy {result.prmu['all']:.3f} vs user-blind {result.user_blind['all']:.3f}")
    return result


@STEPS.register("chains")
def step_chains(ctx: RunContext) -> ChainsResult:
    """Tagged chains on Ray Data into ``chains.out`` (resumes where an earlier run stopped)."""
    from tagpr.jobs.chains import generate

    return generate(ctx.cfg, log=ctx.log)


@STEPS.register("sft")
def step_sft(ctx: RunContext) -> SFTResult:
    """SFT on the chains (Ray Train) into ``<run dir>/policy``, evaluated on dev before and after."""
    from tagpr.jobs.sft import train

    return train(ctx.cfg, log=ctx.log, run_dir=ctx.run_dir)


@STEPS.register("reference")
def step_reference(ctx: RunContext) -> SFTResult:
    """The direct-answer reference into ``<run dir>/reference/policy``: ``model.policy`` fine-tuned with
    SFT's budget on SFT's questions answered ``<answer>{gold}</answer>`` (no reasoning), evaluated on dev
    after. It plays the paper's base model, one that can answer, against which the report's headline is
    measured."""
    from tagpr.jobs.sft import train_reference

    run_dir = ctx.run_dir / "reference"
    run_dir.mkdir(exist_ok=True)
    return train_reference(ctx.cfg, log=ctx.log, run_dir=run_dir)


@STEPS.register("rl")
def step_rl(ctx: RunContext) -> RLResult:
    """Multi-stage asynchronous GRPO into ``<run dir>/rl`` from this run's SFT policy (else
    ``model.policy``), with this run's PRMU (else ``prmu.checkpoint``) behind the reward; SFT's dev
    scores stand as RL's start where they cover the same questions."""
    from tagpr.evaluation import question_ids
    from tagpr.jobs.rl import train

    sft, prmu = ctx.results.get("sft"), ctx.results.get("prmu")
    cfg = with_policy(ctx.cfg, sft.policy if sft else ctx.cfg.model.policy)
    checkpoint = prmu.checkpoint if prmu else cfg.prmu.checkpoint
    cfg = cfg.model_copy(update={"prmu": cfg.prmu.model_copy(update={"checkpoint": checkpoint})})
    run_dir = ctx.run_dir / "rl"
    run_dir.mkdir(exist_ok=True)
    known = sft.after if sft else None  # SFT's policy is where RL starts
    start = known if reusable(known, question_ids(cfg, cfg.rl.eval_limit)) else None
    return train(cfg, log=ctx.log, run_dir=run_dir, start_evaluation=start)


@STEPS.register("report")
def step_report(ctx: RunContext) -> ReportResult:
    """``report.md``, ``report.json`` and PNGs: the untrained base, the direct-answer reference, SFT and
    RL policies scored on the same dev questions (all, or ``run.report_eval_limit`` per task drawn
    across users), the headline against the reference with paired-bootstrap intervals, reward and
    staleness over steps, tag distribution."""
    from actors.progress import dev_progress
    from tagpr.evaluation import evaluate_policy, question_ids
    from tagpr.lamp.io import load_split
    from tagpr.report import (
        build_report,
        plot_report,
        prmu_distribution,
        prmu_note,
        read_metrics,
        render_markdown,
        serving_commands,
        serving_section,
    )

    cfg = ctx.cfg
    limit = cfg.run.report_eval_limit
    sft, ref, rl = (ctx.results.get(k) for k in ("sft", "reference", "rl"))
    policies = {"base": sft.policy_in if sft else cfg.model.policy, "reference": ref.policy if ref else None,
                "sft": sft.policy if sft else None, "rl": rl.policy if rl else None}
    # earlier steps already scored these policies; reused where they scored the same questions
    earlier = {"base": sft.before if sft else None, "reference": ref.after if ref else None,
               "sft": sft.after if sft else None,
               "rl": list(rl.evaluations.values())[-1] if rl and rl.evaluations else None}
    ids = question_ids(cfg, limit)
    evaluations = {}
    for phase, policy in policies.items():
        if reusable(earlier[phase], ids):
            evaluations[phase] = earlier[phase]
        elif policy:
            ctx.log(f"report: scoring the {phase} policy on dev")
            evaluations[phase] = evaluate_policy(str(Path(policy).resolve()), cfg, limit=limit,
                                                 on_task=dev_progress(phase))
    report = build_report(evaluations, seed=cfg.run.seed)
    rl_dir = Path(rl.run_dir) if rl else ctx.run_dir / "rl"
    learner, rollout = (read_metrics(rl_dir / "metrics.jsonl", p) for p in ("learner", "rollout"))
    chains = ctx.results["chains"].splits.get(cfg.data.train_split) if "chains" in ctx.results else None
    tags = chains.tag_distribution if chains else {}
    dist = prmu_distribution(learner)
    plots = plot_report(report, learner, rollout, tags, dist, ctx.run_dir)
    n = {len(v) for v in ids.values()}
    r = cfg.rollout
    notes = [f"{'/'.join(map(str, sorted(n)))} dev questions per task"
             + (f", drawn across all users (seed {cfg.run.seed})" if limit else " (all)")
             + f"; greedy decoding, and one sample per question at temperature {r.temperature}, top_p {r.top_p} "
             "for the sampled format validity."
             + (" The reference is `model.policy` fine-tuned on SFT's questions with the gold answer alone in "
                "place of the chain, with SFT's epochs, learning rate schedule and batch size."
                if "reference" in evaluations else ""),
             "Seconds per step: " + ", ".join(f"{k} {v:g}" for k, v in ctx.seconds.items()) + "."]
    if dist:
        notes.insert(1, prmu_note(dist))
    if rl and (split := {name: st.rollout for name, st in rl.stages.items() if st.rollout}):
        notes.append("Rollout workers' time, per RL stage (`rl/rl_report.json`): " + "; ".join(
            f"{name}: generating {r['gen_frac']:.0%}, waiting for rewards {r['reward_frac']:.0%}, loading weights "
            f"{r['sync_frac']:.0%}, held back by the buffer {r['blocked_frac']:.0%}"
            for name, r in split.items()) + ".")
    (ctx.run_dir / "report.json").write_text(json.dumps({**report, "evaluations": evaluations}, indent=1))
    markdown = render_markdown(report, f"TagPR run {ctx.run_dir.name}", notes, plots)
    ask = []
    if final := policies["rl"] or policies["sft"]:  # the report ends with how to ask the trained policy
        q = load_split(cfg.data.root, cfg.data.tasks[0], cfg.data.dev_split, cfg.data.skip_invalid).questions[0]
        ask = serving_commands(str((ctx.run_dir / RESOLVED_NAME).resolve()), str(Path(final).resolve()),
                               str(Path(cfg.data.root).resolve()), q.user_id or q.id, q.input,
                               cfg.policy_service.model_name)
        markdown += "\n" + serving_section(ask)
    (ctx.run_dir / "report.md").write_text(markdown)
    ctx.log(f"report: {ctx.run_dir / 'report.md'}")
    ctx.log("report: dev task score " + ", ".join(f"{p} {v['task_score']:.3f}" for p, v in report["summary"].items())
            + "".join(f"; {c['policy']} - {c['against']} {i['estimate']:+.3f} [{i['low']:+.3f}, {i['high']:+.3f}]"
                      for c in report["comparisons"].values() if (i := c.get("task_score")))
            + (f"; headline {h['average']:+.1%} ({h['label']})" if (h := report["headline"]) and h["average"]
               is not None else ""))
    if one := [o for o in report["one_answer"] if o["policy"] in ("sft", "rl")]:
        ctx.log("report: one answer for every question: " + ", ".join(
            f"{o['policy']} {o['task']} ({o['answer'][:20]!r})" for o in one))
    if ask:
        ctx.log("report: ask the trained policy:\n" + "\n".join(ask))
    return ReportResult(report=str(ctx.run_dir / "report.md"), headline=report["headline"], summary=report["summary"])


def reusable(evaluation: dict[str, Any] | None, ids: dict[str, list[str]]) -> bool:
    """Whether an earlier ``evaluation`` scored exactly the questions ``ids`` (task -> question ids) with
    per-question scores and the sampled pass, so the report can use it as it is."""
    if not evaluation or "sampled_format_valid" not in evaluation or list(evaluation["tasks"]) != list(ids):
        return False
    return all(set(evaluation["tasks"][t].get("per_question", {})) == set(q) for t, q in ids.items())


def with_policy(cfg: TagPRConfig, policy: str | None) -> TagPRConfig:
    """``cfg`` starting from ``policy`` (an earlier step's output), or unchanged when there is none."""
    if not policy:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"policy": str(Path(policy).resolve())})})


class StepListener(Protocol):
    def start_step(self, name: str) -> None: ...

    def finish_step(self, name: str) -> None: ...


def run_pipeline(cfg: TagPRConfig, steps: list[str], log: Callable[[str], None] = print,
                 listener: StepListener | None = None, run_dir: Path | None = None) -> RunContext:
    funcs = [(name, STEPS.get(name)) for name in steps]  # unknown names fail before any work
    ctx = RunContext(cfg, run_dir or new_run_dir(cfg, "run"), log)
    summary: dict[str, Any] = {"run_dir": str(ctx.run_dir), "steps": {}}  # summary.json
    for name, func in funcs:
        start = time.perf_counter()
        if listener:
            listener.start_step(name)
        out = func(ctx)
        if listener:
            listener.finish_step(name)
        ctx.results[name] = out
        ctx.seconds[name] = round(time.perf_counter() - start, 1)
        summary["steps"][name] = {"seconds": ctx.seconds[name], **out.to_json()}
        (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return ctx


def cmd_run(args: argparse.Namespace) -> int:
    from actors.progress import BoardFollower
    from tagpr.progress import RunProgress

    cfg = command.load(args)
    steps = args.steps.split(",") if args.steps else cfg.run.steps
    for name in steps:  # unknown names fail before a run directory is made
        STEPS.get(name)
    start = time.perf_counter()
    run_dir = new_run_dir(cfg, "run")
    with command.job_console(args, run_dir / "logs") as logs:
        out = logs.console
        with RunProgress(steps, out, redirect_output=logs.verbose) as progress, BoardFollower(progress.update):
            ctx = run_pipeline(cfg, steps, log=progress.log, listener=progress, run_dir=run_dir)
        if "data" in ctx.results:
            command.print_baselines(ctx.results["data"].baselines, cfg.data.dev_split, out)
        if "prmu" in ctx.results:
            from tagpr.jobs.prmu import print_scores

            print_scores(ctx.results["prmu"], out)
        out.print(f"run finished in {time.perf_counter() - start:.1f}s: {ctx.run_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command.main(argv, prefix=["run"])


if __name__ == "__main__":
    sys.exit(main())
