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


def verbose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's, Serve's, vLLM's and the workers' log lines on the console "
                        "(default: in <run dir>/logs/console.log; also TAGPR_LOG_LEVEL=info)")


def job_console(args: argparse.Namespace, log_dir, to_stderr: bool = False):
    """The console of a job that starts Ray or an engine: the libraries' lines go to ``log_dir``
    (printed once) unless ``--verbose`` or ``TAGPR_LOG_LEVEL`` brings them back; ``to_stderr`` keeps
    standard output for the command's result."""
    from tagpr.console import LogCapture, verbose_from_env

    return LogCapture(log_dir, verbose=getattr(args, "verbose", False) or verbose_from_env(), to_stderr=to_stderr)


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


def _command(parent, name: str, help_text: str, handler: str,
             config: bool | str = True) -> argparse.ArgumentParser:
    """A command under ``parent`` run by ``handler`` (``module:function``), taking the config
    arguments unless ``config`` is False (``"positional"``: the config file as a positional)."""
    p = parent.add_parser(name, help=help_text)
    if config:
        config_args(p, positional=config == "positional")
    p.set_defaults(handler=handler)
    return p


def service_args(p: argparse.ArgumentParser, section: str) -> None:
    """What every ``tagpr serve`` command takes: where to bind, the token, staying attached."""
    p.add_argument("--host", help=f"bind address (default: {section}.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"port (default: {section}.port)")
    p.add_argument("--token-env", help=f"env var holding the bearer token (default: {section}.token_env)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve on a non-loopback --host without a bearer token (refused otherwise)")
    p.add_argument("--detach", action="store_true", help="return after deploying (on a running cluster)")
    verbose_args(p)


def _subcommands(sub, name: str, help_text: str):
    return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagpr", description="The tagpr command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    _command(_subcommands(sub, "config", "inspect configs"), "show",
             "print the fully resolved config (validates it)", f"{CLI}:cmd_config_show")

    data = _subcommands(sub, "data", "data sets")
    synth = _command(data, "synth", "write the synthetic LaMP-format users", f"{CLI}:cmd_data_synth")
    synth.add_argument("--out", help="output folder (default: data.root)")
    synth.add_argument("--report", action="store_true", help="score profile-reading vs user-blind baselines")
    check = _command(data, "check", "validate a LaMP folder's {split}_questions/outputs files",
                     f"{CLI}:cmd_data_check", config=False)
    check.add_argument("--root", required=True, help="folder holding LaMP_k/{split}_questions.json")
    check.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7")
    check.add_argument("--split", default="dev", help="file prefix, e.g. train, dev, test (default: dev)")
    check.add_argument("--skip-invalid", action="store_true", help="count and skip bad records instead of failing")

    run = _command(sub, "run", "run the main job (the steps in run.steps) into a new run directory",
                   "tagpr.jobs.pipeline:cmd_run", config="positional")
    verbose_args(run)
    run.add_argument("--steps", help="comma-separated steps to run instead of run.steps")

    ev = _command(sub, "eval", "LaMP's official scores of a predictions file, or of a policy's answers",
                  f"{CLI}:cmd_eval")
    ev.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7")
    ev.add_argument("--predictions", help="predictions in the outputs shape, to score")
    ev.add_argument("--policy", help="HF policy folder: generate predictions for --questions (vLLM, else HF)")
    ev.add_argument("--questions", help="{split}_questions.json to answer with --policy")
    ev.add_argument("--golds", help="{split}_outputs.json (required with --predictions)")
    ev.add_argument("--out", help="write the scores here as JSON")
    ev.add_argument("--write-predictions", help="where the official predictions file goes (with --policy: "
                                                 "default beside --questions; else rewrites the scored ones)")
    verbose_args(ev)

    model = _subcommands(sub, "model", "policy models")
    init = _command(model, "init", "build the embedded tiny default policy", f"{CLI}:cmd_model_init")
    init.add_argument("--out", help="output folder (default: model.policy)")
    init.add_argument("--force", action="store_true", help="rebuild even if the folder holds a model")
    gguf = _command(model, "import-gguf", "convert a GGUF checkpoint into a plain HF folder",
                    f"{CLI}:cmd_model_import_gguf", config=False)
    gguf.add_argument("--gguf", required=True, help="path of the .gguf file")
    gguf.add_argument("--out", required=True, help="output folder")

    prmu = _subcommands(sub, "prmu", "the personalization reward model")
    ptrain = _command(prmu, "train", "train on Ray Train, then evaluate on held-out users",
                      "tagpr.jobs.prmu:cmd_train")
    ptrain.add_argument("--out", help="checkpoint folder (default: <run dir>/prmu)")
    verbose_args(ptrain)
    peval = _command(prmu, "eval", "pairwise accuracy vs the user-blind ablation", "tagpr.jobs.prmu:cmd_eval")
    peval.add_argument("--checkpoint", required=True, help="PRMU checkpoint folder")
    peval.add_argument("--split", help="split to evaluate (default: data.dev_split)")
    peval.add_argument("--out", help="write the result here as JSON")

    verbose_args(_command(_subcommands(sub, "chains", "tagged-thought chains"), "generate",
                          "generate, label and filter chains on Ray Data (resumable)",
                          "tagpr.jobs.chains:cmd_generate"))

    sft = _command(sub, "sft", "SFT on the tagged chains (Ray Train), evaluated on dev before and after",
                   "tagpr.jobs.sft:cmd_train")
    sft.add_argument("--out", help="policy folder (default: <run dir>/policy)")
    verbose_args(sft)

    rl = _command(sub, "rl", "multi-stage asynchronous GRPO (guided, then exploratory) from model.policy",
                  "tagpr.jobs.rl:cmd_train")
    rl.add_argument("--resume", metavar="RUN_DIR", help="continue this run directory from its newest checkpoint")
    verbose_args(rl)

    _command(sub, "doctor", "check versions, devices, the Ray address and token, and ports", f"{CLI}:cmd_doctor")

    scale = _command(_subcommands(sub, "scale", "resize a running job's roles"), "rollout",
                     "set the number of rollout workers of a running RL job", f"{CLI}:cmd_scale_rollout")
    scale.add_argument("n", type=int, metavar="N", help="workers wanted (clamped to rollout.min/max_workers)")
    scale.add_argument("--run", help="the job's run.name (default: from the config)")
    scale.add_argument("--address", default="auto", help="Ray address (default: auto; RAY_ADDRESS wins)")
    scale.add_argument("--timeout", type=float, default=120, help="seconds to wait for the job to apply it")

    services = _subcommands(sub, "serve", "services")
    serve = _command(services, "prmu", "serve the PRMU reward service over HTTP (Ray Serve)", f"{CLI}:cmd_serve_prmu")
    serve.add_argument("--checkpoint", required=True, help="PRMU checkpoint folder")
    service_args(serve, "service")
    policy = _command(services, "policy", "serve the trained policy: OpenAI-compatible chat, personalized per user "
                      "(Ray Serve); where it already runs, swap in the new policy", f"{CLI}:cmd_serve_policy")
    policy.add_argument("--policy", required=True, help="policy folder (an SFT or RL stage's output)")
    policy.add_argument("--profiles", help="LaMP data root whose question files give users' profiles")
    policy.add_argument("--route-prefix", help="where the routes start (default: policy_service.route_prefix, /)")
    policy.add_argument("--replicas", type=int, help="engine replicas, each holding the policy (default: "
                        "policy_service.min_replicas)")
    policy.add_argument("--max-replicas", type=int, help="autoscale between --replicas and this many replicas on "
                        "requests in flight (policy_service.target_ongoing_requests each)")
    policy.add_argument("--backend", choices=["serve_llm", "adapter"], help="serve_llm: Ray Serve LLM (vLLM's async "
                        "engine, streamed tokens); adapter: the project's engine adapter (default: "
                        "policy_service.backend)")
    service_args(policy, "policy_service")

    tags = _command(_subcommands(sub, "tags", "the tagged-thought format"), "check",
                    "parse a response and list violated tag constraints", f"{CLI}:cmd_tags_check")
    tags.add_argument("--task", required=True, help="LaMP_1 .. LaMP_7 (sets the required tags)")
    tags.add_argument("file", help="response text file, or - for standard input")
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
