"""The command line's arguments and dispatch, shared by ``tagpr`` and ``python -m tagpr.jobs.<name>``.

Every command's arguments are declared here; its handler lives with the job it runs and is named by
``module:function``, imported only when that command runs. So the ``tagpr`` entry point, the job
modules and this module import each other in one direction only (entry point and jobs -> here),
and ``tagpr --help`` loads no heavy library. User mistakes (bad config, bad data, bad arguments)
end with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tagpr.config import TagPRConfig, load_config
from tagpr.errors import TagPRError

CLI = "tagpr.jobs.cli"


def config_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    help_text = "YAML config (default: configs/default.yaml)"
    if positional:
        p.add_argument("config", nargs="?", default=None, help=help_text)
    else:
        p.add_argument("--config", "-c", default=None, help=help_text)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set rl.group_size=4 (repeatable)")


def load(args: argparse.Namespace) -> TagPRConfig:
    return load_config(args.config, args.overrides)


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def print_baselines(results: dict, dev_split: str, out) -> None:
    """The synthetic data's profile-reader vs user-blind scores as a table on ``out`` (a rich console)."""
    from rich.table import Table

    from tagpr.lamp.tasks import get_task

    table = Table(title=f"Profile reader vs user-blind baseline on {dev_split}")
    for col in ("task", "metric", "profile reader", "user-blind", "gap"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, scores in results.items():
        metric = get_task(task).primary_metric
        reader, blind = scores["profile_reader"][metric], scores["user_blind"][metric]
        table.add_row(task, metric, f"{reader:.3f}", f"{blind:.3f}", f"{reader - blind:+.3f}")
    out.print(table)


def print_prmu(result: dict, out) -> None:
    """The PRMU's and the user-blind model's held-out pairwise accuracy per task as a table."""
    from rich.table import Table

    table = Table(title=f"PRMU pairwise accuracy on held-out users ({result['version']})")
    for col in ("task", "PRMU", "user-blind"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task in result["prmu"]:
        table.add_row(task, f"{result['prmu'][task]:.3f}", f"{result['user_blind'][task]:.3f}")
    out.print(table)


def _handler(p: argparse.ArgumentParser, target: str) -> None:
    p.set_defaults(handler=target)


def _subcommands(sub, name: str, help_text: str):
    return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagpr", description="The tagpr command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    show = _subcommands(sub, "config", "inspect configs").add_parser(
        "show", help="print the fully resolved config (validates it)")
    config_args(show)
    _handler(show, f"{CLI}:cmd_config_show")

    data = _subcommands(sub, "data", "data sets")
    synth = data.add_parser("synth", help="write the synthetic LaMP-format users")
    config_args(synth)
    synth.add_argument("--out", help="output folder (default: data.root)")
    synth.add_argument("--report", action="store_true", help="score profile-reading vs user-blind baselines")
    _handler(synth, f"{CLI}:cmd_data_synth")
    check = data.add_parser("check", help="validate a LaMP folder's {split}_questions/outputs files")
    check.add_argument("--root", required=True, help="folder holding LaMP_k/{split}_questions.json")
    check.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7")
    check.add_argument("--split", default="dev", help="file prefix, e.g. train, dev, test (default: dev)")
    check.add_argument("--skip-invalid", action="store_true", help="count and skip bad records instead of failing")
    _handler(check, f"{CLI}:cmd_data_check")

    run = sub.add_parser("run", help="run the main job (the steps in run.steps) into a new run directory")
    config_args(run, positional=True)
    run.add_argument("--steps", help="comma-separated steps to run instead of run.steps")
    _handler(run, "tagpr.jobs.pipeline:cmd_run")

    ev = sub.add_parser("eval", help="LaMP's official scores of a predictions file, or of a policy's answers")
    config_args(ev)
    ev.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7")
    ev.add_argument("--predictions", help="predictions in the outputs shape, to score")
    ev.add_argument("--policy", help="HF policy folder: generate predictions for --questions (vLLM, else HF)")
    ev.add_argument("--questions", help="{split}_questions.json to answer with --policy")
    ev.add_argument("--golds", help="{split}_outputs.json (required with --predictions)")
    ev.add_argument("--out", help="write the scores here as JSON")
    ev.add_argument("--write-predictions", help="where the official predictions file goes (with --policy: "
                                                 "default beside --questions; else rewrites the scored ones)")
    _handler(ev, f"{CLI}:cmd_eval")

    model = _subcommands(sub, "model", "policy models")
    init = model.add_parser("init", help="build the embedded tiny default policy")
    config_args(init)
    init.add_argument("--out", help="output folder (default: model.policy)")
    init.add_argument("--force", action="store_true", help="rebuild even if the folder holds a model")
    _handler(init, f"{CLI}:cmd_model_init")
    gguf = model.add_parser("import-gguf", help="convert a GGUF checkpoint into a plain HF folder")
    gguf.add_argument("--gguf", required=True, help="path of the .gguf file")
    gguf.add_argument("--out", required=True, help="output folder")
    _handler(gguf, f"{CLI}:cmd_model_import_gguf")

    prmu = _subcommands(sub, "prmu", "the personalization reward model")
    ptrain = prmu.add_parser("train", help="train on Ray Train, then evaluate on held-out users")
    config_args(ptrain)
    ptrain.add_argument("--out", help="checkpoint folder (default: <run dir>/prmu)")
    _handler(ptrain, "tagpr.jobs.prmu:cmd_train")
    peval = prmu.add_parser("eval", help="pairwise accuracy vs the user-blind ablation")
    config_args(peval)
    peval.add_argument("--checkpoint", required=True, help="PRMU checkpoint folder")
    peval.add_argument("--split", help="split to evaluate (default: data.dev_split)")
    peval.add_argument("--out", help="write the result here as JSON")
    _handler(peval, "tagpr.jobs.prmu:cmd_eval")

    cgen = _subcommands(sub, "chains", "tagged-thought chains").add_parser(
        "generate", help="generate, label and filter chains on Ray Data (resumable)")
    config_args(cgen)
    _handler(cgen, "tagpr.jobs.chains:cmd_generate")

    sft = sub.add_parser("sft", help="SFT on the tagged chains (Ray Train), evaluated on dev before and after")
    config_args(sft)
    sft.add_argument("--out", help="policy folder (default: <run dir>/policy)")
    _handler(sft, "tagpr.jobs.sft:cmd_train")

    rl = sub.add_parser("rl", help="multi-stage asynchronous GRPO (guided, then exploratory) from model.policy")
    config_args(rl)
    rl.add_argument("--resume", metavar="RUN_DIR", help="continue this run directory from its newest checkpoint")
    _handler(rl, "tagpr.jobs.rl:cmd_train")

    doctor = sub.add_parser("doctor", help="check versions, devices, the Ray address and token, and ports")
    config_args(doctor)
    _handler(doctor, f"{CLI}:cmd_doctor")

    srollout = _subcommands(sub, "scale", "resize a running job's roles").add_parser(
        "rollout", help="set the number of rollout workers of a running RL job")
    config_args(srollout)
    srollout.add_argument("n", type=int, metavar="N", help="workers wanted (clamped to rollout.min/max_workers)")
    srollout.add_argument("--run", help="the job's run.name (default: from the config)")
    srollout.add_argument("--address", default="auto", help="Ray address (default: auto; RAY_ADDRESS wins)")
    srollout.add_argument("--timeout", type=float, default=120, help="seconds to wait for the job to apply it")
    _handler(srollout, f"{CLI}:cmd_scale_rollout")

    sprmu = _subcommands(sub, "serve", "services").add_parser(
        "prmu", help="serve the PRMU reward service over HTTP (Ray Serve)")
    config_args(sprmu)
    sprmu.add_argument("--checkpoint", required=True, help="PRMU checkpoint folder")
    sprmu.add_argument("--host", help="bind address (default: service.host, 127.0.0.1)")
    sprmu.add_argument("--port", type=int, help="port (default: service.port)")
    sprmu.add_argument("--token-env", help="env var holding the bearer token (default: service.token_env)")
    sprmu.add_argument("--detach", action="store_true", help="return after deploying (on a running cluster)")
    _handler(sprmu, f"{CLI}:cmd_serve_prmu")

    tcheck = _subcommands(sub, "tags", "the tagged-thought format").add_parser(
        "check", help="parse a response and list violated tag constraints")
    config_args(tcheck)
    tcheck.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7 (sets the required tags)")
    tcheck.add_argument("file", help="response text file, or - for standard input")
    _handler(tcheck, f"{CLI}:cmd_tags_check")
    return parser


def main(argv: Sequence[str] | None = None, prefix: Sequence[str] = ()) -> int:
    """Parse ``prefix + argv`` (``argv`` defaults to the process's arguments) and run the handler.
    A job module's ``main`` passes its own command as ``prefix``."""
    args = build_parser().parse_args([*prefix, *(sys.argv[1:] if argv is None else argv)])
    module, function = args.handler.split(":")
    try:
        return getattr(importlib.import_module(module), function)(args)
    except TagPRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
