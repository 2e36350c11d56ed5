"""The ``tagpr`` command line: the entry point, and the handlers of the commands that are not a job
(config, data, eval, model, doctor, scale, serve, tags). The arguments and the dispatch are in
:mod:`tagpr.jobs.command`; the jobs' handlers are in their modules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tagpr.config import dump_config, load_config, new_run_dir, write_resolved
from tagpr.credentials import is_loopback, read_secret
from tagpr.errors import TagPRError
from tagpr.jobs import command
from tagpr.jobs.command import console, load, print_baselines

# ---------------------------------------------------------------- config


def cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(load(args)))
    return 0


# ---------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from tagpr.lamp.synthetic import write_synthetic

    cfg = load(args)
    root = Path(args.out or cfg.data.root)
    out = console()
    start = time.perf_counter()
    with Progress(console=out, transient=True) as progress:
        bar = progress.add_task("synthetic users", total=len(cfg.data.tasks))
        counts = {}
        for task in cfg.data.tasks:
            progress.update(bar, description=f"synthetic users: {task}")
            counts.update(write_synthetic(root, cfg.data.synthetic, [task]))
            progress.advance(bar)
    write_resolved(cfg, root)
    total = sum(n for splits in counts.values() for n in splits.values())
    out.print(f"wrote {total} questions for {len(counts)} tasks to {root} in {time.perf_counter() - start:.1f}s")
    if args.report:
        from tagpr.lamp.synthetic import dev_baselines

        d = cfg.data
        results = dev_baselines(root, d.tasks, d.train_split, d.dev_split)
        print_baselines(results, d.dev_split, out)
        (root / "baselines.json").write_text(json.dumps(results, indent=1))
        out.print(f"baseline scores written to {root / 'baselines.json'}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from tagpr.lamp.io import load_split

    split = load_split(args.root, args.task, args.split, skip_invalid=args.skip_invalid, require_golds=False)
    golds = "no outputs file" if split.golds is None else f"{len(split.golds)} golds"
    print(f"{split.task.name} {args.split}: {split.report.summary()}; {golds}")
    return 0


# ---------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a predictions file, or generate one with ``--policy`` from a questions file (and score it
    when golds are given)."""
    from tagpr.lamp.io import iter_questions, load_outputs, write_outputs
    from tagpr.lamp.metrics import official_names, score_task
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
        cfg = load(args)
        questions = list(iter_questions(task, args.questions, skip_invalid=cfg.data.skip_invalid))
        policy = resolve_model_path(args.policy, cfg.model.allow_hub)
        # the engine's lines go to the log file (named on standard error); standard output is the JSON
        with command.job_console(args, new_run_dir(cfg, "eval") / "logs", to_stderr=True):
            preds, valid = predict(policy, cfg, task.name, questions)
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
        scored = {i: preds[i] for i in golds} if args.policy else preds  # generated for every question
        scores = score_task(task, scored, golds, strict=not args.policy)
        result.update(n=len(golds), **scores, **official_names(scores))
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

    cfg = load(args)
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


def cmd_scale_rollout(args: argparse.Namespace) -> int:
    """Resize a running RL job's rollout pool through its control actor, and wait until it is applied."""
    import ray

    from actors.cluster import connect
    from actors.control import control_name

    if args.n < 0:
        raise TagPRError(f"N must be >= 0, got {args.n}")
    cfg = load(args)
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

    out = console()
    rows = run_checks(load(args))
    style = {"ok": "green", "warn": "yellow", "fail": "red"}
    for r in rows:
        out.print(f"[{style[r.status]}]{r.status:>4}[/] {r.name:<14} {r.detail}", soft_wrap=True)
        if r.fix:
            out.print(f"{'':>5} {'':<14} fix: {r.fix}", soft_wrap=True)
    failed, warned = sum(r.status == FAIL for r in rows), sum(r.status == WARN for r in rows)
    out.print(f"{len(rows)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


# ---------------------------------------------------------------- serve


def _serve(args: argparse.Namespace, section: str, extra: Sequence[str], start) -> int:
    """Load the config with the command's overrides of ``section``, refuse a non-loopback host
    without a token, deploy with ``start(cfg)`` (returns the URL, what it serves, and whether to
    stay: a command that only changed a running service returns) and stay until Ctrl-C."""
    overrides = list(args.overrides) + list(extra)
    for flag, key in (("host", "host"), ("port", "port"), ("token_env", "token_env")):
        if getattr(args, flag):
            overrides.append(f"{section}.{key}={getattr(args, flag)}")
    cfg = load_config(args.config, overrides)
    s = getattr(cfg, section)
    token = read_secret(s.token_env)
    if not token and not is_loopback(s.host) and not args.allow_unauthenticated:
        raise TagPRError(f"--host {s.host} is reachable from other machines and ${s.token_env} holds no bearer "
                         "token: set one, or pass --allow-unauthenticated to serve without")
    from actors.cluster import connect

    with command.job_console(args, new_run_dir(cfg, "serve") / "logs") as logs:
        connect(cfg.cluster)
        url, describe, stay = start(cfg)
        auth = f"bearer token from ${s.token_env}" if token else "no token"
        logs.console.print(f"{describe} at {url} ({auth}); docs at {url}/docs")
        if args.detach or not stay:
            return 0
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            logs.console.print("stopping")
    return 0


def cmd_serve_prmu(args: argparse.Namespace) -> int:
    def start(cfg):
        from services.reward.deploy import serve_reward
        from tagpr.prmu.checkpoint import load_meta

        version = load_meta(args.checkpoint)["version"]
        return serve_reward(cfg, args.checkpoint), f"reward service {version}", True

    return _serve(args, "service", (), start)


def cmd_serve_policy(args: argparse.Namespace) -> int:
    """Deploy the policy service, or, where the cluster already runs it, swap the new policy in."""
    from services.policy import deploy

    deploy.check_policy(args.policy)

    def start(cfg):
        if deploy.running():
            seconds = deploy.swap_policy(cfg, args.policy, args.profiles)
            return deploy.url(cfg), f"policy {args.policy} swapped in after {seconds:.0f} s", False
        return deploy.serve_policy(cfg, args.policy, args.profiles), f"policy {args.policy}", True

    extra = [f"policy_service.route_prefix={args.route_prefix}"] if args.route_prefix else []
    if args.replicas:
        extra += [f"policy_service.min_replicas={args.replicas}",
                  f"policy_service.max_replicas={max(args.replicas, args.max_replicas or 0)}"]
    extra += [f"policy_service.max_replicas={args.max_replicas}"] if args.max_replicas else []
    extra += [f"policy_service.backend={args.backend}"] if args.backend else []
    return _serve(args, "policy_service", extra, start)


# ---------------------------------------------------------------- tags


def cmd_tags_check(args: argparse.Namespace) -> int:
    from tagpr.lamp.tasks import get_task
    from tagpr.tags import TagSet

    cfg = load(args)
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


def main(argv: Sequence[str] | None = None) -> int:
    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
