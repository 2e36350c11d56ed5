"""The ``tagpr`` command line.

User mistakes (bad config, bad data, bad arguments) end with one ``error:`` line and exit code 2;
heavy libraries are imported only by the subcommands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tagpr.config import TagPRConfig, dump_config, load_config, write_resolved
from tagpr.credentials import read_secret
from tagpr.errors import TagPRError

Handler = Callable[[argparse.Namespace], int]


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _config_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    help_text = "YAML config (default: configs/default.yaml)"
    if positional:
        p.add_argument("config", nargs="?", default=None, help=help_text)
    else:
        p.add_argument("--config", "-c", default=None, help=help_text)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set rl.group_size=4 (repeatable)")


def _load(args: argparse.Namespace) -> TagPRConfig:
    return load_config(args.config, args.overrides)


# ---------------------------------------------------------------- config


def cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_load(args)))
    return 0


# ---------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from tagpr.lamp.synthetic import write_synthetic

    cfg = _load(args)
    root = Path(args.out or cfg.data.root)
    console = _console()
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("synthetic users", total=len(cfg.data.tasks))
        counts = {}
        for task in cfg.data.tasks:
            progress.update(bar, description=f"synthetic users: {task}")
            counts.update(write_synthetic(root, cfg.data.synthetic, [task]))
            progress.advance(bar)
    write_resolved(cfg, root)
    total = sum(n for splits in counts.values() for n in splits.values())
    console.print(f"wrote {total} questions for {len(counts)} tasks to {root} in {time.perf_counter() - start:.1f}s")
    if args.report:
        from tagpr.lamp.synthetic import dev_baselines

        d = cfg.data
        results = dev_baselines(root, d.tasks, d.train_split, d.dev_split)
        _print_baselines(results, d.dev_split, console)
        (root / "baselines.json").write_text(json.dumps(results, indent=1))
        console.print(f"baseline scores written to {root / 'baselines.json'}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from tagpr.lamp.io import load_split

    split = load_split(args.root, args.task, args.split, skip_invalid=args.skip_invalid, require_golds=False)
    golds = "no outputs file" if split.golds is None else f"{len(split.golds)} golds"
    print(f"{split.task.name} {args.split}: {split.report.summary()}; {golds}")
    return 0


def _print_baselines(results: dict, dev_split: str, console) -> None:
    from rich.table import Table

    from tagpr.lamp.tasks import get_task

    table = Table(title=f"Profile reader vs user-blind baseline on {dev_split}")
    for col in ("task", "metric", "profile reader", "user-blind", "gap"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, scores in results.items():
        metric = get_task(task).primary_metric
        reader, blind = scores["profile_reader"][metric], scores["user_blind"][metric]
        table.add_row(task, metric, f"{reader:.3f}", f"{blind:.3f}", f"{reader - blind:+.3f}")
    console.print(table)


# ---------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from actors.progress import BoardFollower
    from tagpr.pipeline import run_pipeline
    from tagpr.progress import RunProgress

    cfg = _load(args)
    console = _console()
    steps = args.steps.split(",") if args.steps else cfg.run.steps
    start = time.perf_counter()
    with RunProgress(steps, console) as progress, BoardFollower(progress.update):
        ctx = run_pipeline(cfg, steps, log=progress.log, listener=progress)
    if "data" in ctx.results:
        _print_baselines(ctx.results["data"]["baselines"], cfg.data.dev_split, console)
    if "prmu" in ctx.results:
        _print_prmu(ctx.results["prmu"], console)
    console.print(f"run finished in {time.perf_counter() - start:.1f}s: {ctx.run_dir}")
    return 0


# ---------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a predictions file, or generate one with ``--policy`` from a questions file (and score it
    when golds are given)."""
    from tagpr.lamp.io import iter_questions, load_outputs, write_outputs
    from tagpr.lamp.metrics import score_task
    from tagpr.lamp.tasks import get_task

    task = get_task(args.task)
    if bool(args.policy) == bool(args.predictions):
        raise TagPRError("give --predictions (a file to score) or --policy with --questions (to generate one)")
    if args.predictions and not args.golds:
        raise TagPRError("--predictions needs --golds to score against")
    result: dict = {"task": task.name}
    if args.policy:
        from tagpr.evaluation import predict
        from tagpr.models import resolve_model_path

        if not args.questions:
            raise TagPRError("--policy needs --questions (a LaMP {split}_questions.json)")
        cfg = _load(args)
        questions = list(iter_questions(task, args.questions, skip_invalid=cfg.data.skip_invalid))
        preds, valid = predict(resolve_model_path(args.policy, cfg.model.allow_hub), cfg, task.name, questions)
        out = args.write_predictions or str(Path(args.questions).with_name(
            Path(args.questions).name.replace("questions", "predictions")))
        write_outputs(out, task.name, preds)
        result.update(n=len(preds), format_valid=valid, predictions=out)
    else:
        _, preds = load_outputs(args.predictions, task)
    if args.golds:
        _, golds = load_outputs(args.golds, task)
        missing = sorted(set(golds) - set(preds))
        if args.policy and missing:
            raise TagPRError(f"--golds: {len(missing)} ids have no question in --questions (first: {missing[0]})")
        result.update(n=len(golds), **score_task(task, preds, golds))
        if args.write_predictions and not args.policy:
            write_outputs(args.write_predictions, task.name, {i: preds[i] for i in golds})
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------- model


def cmd_model_init(args: argparse.Namespace) -> int:
    from tagpr.models import build_tiny_policy

    cfg = _load(args)
    out = Path(args.out or cfg.model.policy)
    if (out / "config.json").exists() and not args.force:
        print(f"{out} already holds a model (use --force to rebuild)")
        return 0
    start = time.perf_counter()
    build_tiny_policy(cfg.model, cfg.tags, out)
    write_resolved(cfg, out)
    print(f"tiny policy written to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_model_import_gguf(args: argparse.Namespace) -> int:
    from tagpr.models import import_gguf

    start = time.perf_counter()
    out = import_gguf(args.gguf, args.out)
    print(f"HF model written to {out} in {time.perf_counter() - start:.1f}s")
    return 0


# ---------------------------------------------------------------- prmu


def _print_prmu(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"PRMU pairwise accuracy on held-out users ({result['version']})")
    for col in ("task", "PRMU", "user-blind"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task in result["prmu"]:
        table.add_row(task, f"{result['prmu'][task]:.3f}", f"{result['user_blind'][task]:.3f}")
    console.print(table)


def cmd_prmu_train(args: argparse.Namespace) -> int:
    from tagpr.jobs.prmu import train

    console = _console()
    result = train(_load(args), args.out, log=console.print)
    _print_prmu(result, console)
    console.print(f"checkpoint {result['checkpoint']} ({result['seconds']}s)")
    return 0


def cmd_prmu_eval(args: argparse.Namespace) -> int:
    from tagpr.jobs.prmu import eval_checkpoint

    result = eval_checkpoint(_load(args), args.checkpoint, args.split)
    _print_prmu(result, _console())
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------- chains


def cmd_chains_generate(args: argparse.Namespace) -> int:
    from tagpr.jobs.chains import generate

    console = _console()
    summary = generate(_load(args), log=console.print)
    for split, s in summary.items():
        console.print(f"{split}: {s['chains']} chains ({s['kept_this_run']} kept this run, dropped "
                      f"{s['dropped_this_run']}) in {s['seconds']}s")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from tagpr.jobs.sft import train
    from tagpr.lamp.tasks import get_task

    console = _console()
    result = train(_load(args), args.out, log=console.print)
    for when in ("before", "after"):
        if when in result:
            r = result[when]
            console.print(f"{when} SFT: format valid {r['format_valid']:.3f}, tag score {r['tag_score']:.3f}, "
                          + ", ".join(f"{t} {v[get_task(t).primary_metric]:.3f}" for t, v in r["tasks"].items()))
    console.print(f"policy {result['policy']} ({result['seconds']}s)")
    return 0


def cmd_rl(args: argparse.Namespace) -> int:
    from tagpr.jobs.rl import train

    console = _console()
    report = train(_load(args), log=console.print, resume=args.resume)
    for name, stage in report["stages"].items():
        console.print(f"stage {name}: {stage['stage_step']} steps (version {stage['step']}) in {stage['seconds']}s")
    for name, r in report["evaluations"].items():
        console.print(f"dev at {name}: format valid {r['format_valid']:.3f}, tag score {r['tag_score']:.3f}, "
                      f"task score {r['task_score']:.3f}")
    console.print(f"run {report['run_dir']} ({report['seconds']}s)")
    return 0


def cmd_scale_rollout(args: argparse.Namespace) -> int:
    """Resize a running RL job's rollout pool through its control actor, and wait until it is applied."""
    import ray

    from actors.cluster import connect
    from actors.control import control_name

    if args.n < 0:
        raise TagPRError(f"N must be >= 0, got {args.n}")
    cfg = _load(args)
    name = args.run or cfg.run.name
    connect(cfg.cluster.model_copy(update={"address": args.address}), log_to_driver=False)
    try:
        control = ray.get_actor(control_name(name), namespace=cfg.cluster.namespace)
    except ValueError:
        raise TagPRError(f"no running RL job named {name!r} in Ray namespace {cfg.cluster.namespace!r} "
                         f"(--run sets the job's run.name)") from None
    ticket = ray.get(control.request_scale.remote(args.n))
    deadline = time.monotonic() + args.timeout
    while (status := ray.get(control.status.remote()))["applied_ticket"] < ticket["ticket"]:
        if time.monotonic() > deadline:
            raise TagPRError(f"the job did not apply the resize within {args.timeout:g} s (is it between stages?)")
        time.sleep(0.5)
    clamped = f"; asked for {args.n}, bounds {status['min']}..{status['max']}" if ticket["target"] != args.n else ""
    print(f"rollout workers: {ticket['size']} -> {status['size']}{clamped}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check this host and its Ray connection; exit 1 when a check fails."""
    from tagpr.doctor import FAIL, WARN, run_checks

    console = _console()
    rows = run_checks(_load(args))
    style = {"ok": "green", "warn": "yellow", "fail": "red"}
    for r in rows:
        console.print(f"[{style[r.status]}]{r.status:>4}[/] {r.name:<14} {r.detail}", soft_wrap=True)
        if r.fix:
            console.print(f"{'':>5} {'':<14} fix: {r.fix}", soft_wrap=True)
    failed, warned = sum(r.status == FAIL for r in rows), sum(r.status == WARN for r in rows)
    console.print(f"{len(rows)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


# ---------------------------------------------------------------- serve


def cmd_serve_prmu(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.host:
        overrides.append(f"service.host={args.host}")
    if args.port:
        overrides.append(f"service.port={args.port}")
    if args.token_env:
        overrides.append(f"service.token_env={args.token_env}")
    cfg = load_config(args.config, overrides)
    from actors.cluster import connect
    from services.reward.deploy import serve_reward
    from tagpr.prmu.checkpoint import load_meta

    meta = load_meta(args.checkpoint)
    connect(cfg.cluster)
    url = serve_reward(cfg, args.checkpoint)
    auth = f"bearer token from ${cfg.service.token_env}" if read_secret(cfg.service.token_env) else "no token"
    print(f"reward service {meta['version']} at {url} ({auth}); docs at {url}/docs", flush=True)
    if args.detach:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    return 0


# ---------------------------------------------------------------- tags


def cmd_tags_check(args: argparse.Namespace) -> int:
    from tagpr.lamp.tasks import get_task
    from tagpr.tags import TagSet

    cfg = _load(args)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    checked = TagSet(cfg.tags).check(text, get_task(args.task).task_type)
    print(json.dumps({
        "parses": checked.parses,
        "score": checked.score,
        "answer": checked.answer,
        "sections": [s.tag for s in checked.parsed.sections],
        "violations": [{"constraint": v.constraint, "reason": v.reason} for v in checked.violations],
    }, indent=1))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagpr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the fully resolved config (validates it)")
    _config_args(show)
    show.set_defaults(func=cmd_config_show)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="write the synthetic LaMP-format users")
    _config_args(synth)
    synth.add_argument("--out", help="output folder (default: data.root)")
    synth.add_argument("--report", action="store_true", help="score profile-reading vs user-blind baselines")
    synth.set_defaults(func=cmd_data_synth)

    check = data.add_parser("check", help="validate a LaMP folder's {split}_questions/outputs files")
    check.add_argument("--root", required=True, help="folder holding LaMP_k/{split}_questions.json")
    check.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7")
    check.add_argument("--split", default="dev", help="file prefix, e.g. train, dev, test (default: dev)")
    check.add_argument("--skip-invalid", action="store_true", help="count and skip bad records instead of failing")
    check.set_defaults(func=cmd_data_check)

    run = sub.add_parser("run", help="run the main job (the steps in run.steps) into a new run directory")
    _config_args(run, positional=True)
    run.add_argument("--steps", help="comma-separated steps to run instead of run.steps")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="LaMP's official scores of a predictions file, or of a policy's answers")
    _config_args(ev)
    ev.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7")
    ev.add_argument("--predictions", help="predictions in the outputs shape, to score")
    ev.add_argument("--policy", help="HF policy folder: generate predictions for --questions (vLLM, else HF)")
    ev.add_argument("--questions", help="{split}_questions.json to answer with --policy")
    ev.add_argument("--golds", help="{split}_outputs.json (required with --predictions)")
    ev.add_argument("--out", help="write the scores here as JSON")
    ev.add_argument("--write-predictions", help="where the official predictions file goes (with --policy: "
                                                 "default beside --questions; else rewrites the scored ones)")
    ev.set_defaults(func=cmd_eval)

    model = sub.add_parser("model", help="policy models").add_subparsers(dest="action", required=True)
    init = model.add_parser("init", help="build the embedded tiny default policy")
    _config_args(init)
    init.add_argument("--out", help="output folder (default: model.policy)")
    init.add_argument("--force", action="store_true", help="rebuild even if the folder holds a model")
    init.set_defaults(func=cmd_model_init)

    gguf = model.add_parser("import-gguf", help="convert a GGUF checkpoint into a plain HF folder")
    gguf.add_argument("--gguf", required=True, help="path of the .gguf file")
    gguf.add_argument("--out", required=True, help="output folder")
    gguf.set_defaults(func=cmd_model_import_gguf)

    prmu = sub.add_parser("prmu", help="the personalization reward model").add_subparsers(dest="action",
                                                                                           required=True)
    ptrain = prmu.add_parser("train", help="train on Ray Train, then evaluate on held-out users")
    _config_args(ptrain)
    ptrain.add_argument("--out", help="checkpoint folder (default: <run dir>/prmu)")
    ptrain.set_defaults(func=cmd_prmu_train)
    peval = prmu.add_parser("eval", help="pairwise accuracy vs the user-blind ablation")
    _config_args(peval)
    peval.add_argument("--checkpoint", required=True, help="PRMU checkpoint folder")
    peval.add_argument("--split", help="split to evaluate (default: data.dev_split)")
    peval.add_argument("--out", help="write the result here as JSON")
    peval.set_defaults(func=cmd_prmu_eval)

    chains = sub.add_parser("chains", help="tagged-thought chains").add_subparsers(dest="action", required=True)
    cgen = chains.add_parser("generate", help="generate, label and filter chains on Ray Data (resumable)")
    _config_args(cgen)
    cgen.set_defaults(func=cmd_chains_generate)

    sft = sub.add_parser("sft", help="SFT on the tagged chains (Ray Train), evaluated on dev before and after")
    _config_args(sft)
    sft.add_argument("--out", help="policy folder (default: <run dir>/policy)")
    sft.set_defaults(func=cmd_sft)

    rl = sub.add_parser("rl", help="multi-stage asynchronous GRPO (guided, then exploratory) from model.policy")
    _config_args(rl)
    rl.add_argument("--resume", metavar="RUN_DIR", help="continue this run directory from its newest checkpoint")
    rl.set_defaults(func=cmd_rl)

    doctor = sub.add_parser("doctor", help="check versions, devices, the Ray address and token, and ports")
    _config_args(doctor)
    doctor.set_defaults(func=cmd_doctor)

    scale = sub.add_parser("scale", help="resize a running job's roles").add_subparsers(dest="action", required=True)
    srollout = scale.add_parser("rollout", help="set the number of rollout workers of a running RL job")
    _config_args(srollout)
    srollout.add_argument("n", type=int, metavar="N", help="workers wanted (clamped to rollout.min/max_workers)")
    srollout.add_argument("--run", help="the job's run.name (default: from the config)")
    srollout.add_argument("--address", default="auto", help="Ray address (default: auto; RAY_ADDRESS wins)")
    srollout.add_argument("--timeout", type=float, default=120, help="seconds to wait for the job to apply it")
    srollout.set_defaults(func=cmd_scale_rollout)

    serve_p = sub.add_parser("serve", help="services").add_subparsers(dest="action", required=True)
    sprmu = serve_p.add_parser("prmu", help="serve the PRMU reward service over HTTP (Ray Serve)")
    _config_args(sprmu)
    sprmu.add_argument("--checkpoint", required=True, help="PRMU checkpoint folder")
    sprmu.add_argument("--host", help="bind address (default: service.host, 127.0.0.1)")
    sprmu.add_argument("--port", type=int, help="port (default: service.port)")
    sprmu.add_argument("--token-env", help="env var holding the bearer token (default: service.token_env)")
    sprmu.add_argument("--detach", action="store_true", help="return after deploying (on a running cluster)")
    sprmu.set_defaults(func=cmd_serve_prmu)

    tags = sub.add_parser("tags", help="the tagged-thought format").add_subparsers(dest="action", required=True)
    tcheck = tags.add_parser("check", help="parse a response and list violated tag constraints")
    _config_args(tcheck)
    tcheck.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7 (sets the required tags)")
    tcheck.add_argument("file", help="response text file, or - for standard input")
    tcheck.set_defaults(func=cmd_tags_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TagPRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
