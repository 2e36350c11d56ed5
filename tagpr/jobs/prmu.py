"""PRMU jobs: train the PRMU and its user-blind baseline on Ray Train, compare them on held-out users.

    python -m tagpr.jobs.prmu train [--config C] [--set k=v] [--out DIR]
    python -m tagpr.jobs.prmu eval --checkpoint DIR [--config C] [--split dev]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tagpr.config import TagPRConfig, new_run_dir
from tagpr.errors import ConfigError, TagPRError
from tagpr.jobs import command
from tagpr.prmu import checkpoint
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.model import PRMUNet
from tagpr.prmu.pairs import pairs_for_tasks
from tagpr.prmu.train import PairData, evaluate
from tagpr.records import Record


@dataclass(frozen=True, kw_only=True)
class PRMUResult(Record):
    """A trained PRMU (``prmu_eval.json``): where it is, and its and the user-blind baseline's pairwise
    accuracy on held-out dev users, per task and ``all``."""

    checkpoint: str
    version: str
    train_pairs: int
    dev_pairs: int
    seconds: float
    prmu: dict[str, float]
    user_blind: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class PRMUEval(Record):
    """A checkpoint's and its user-blind baseline's pairwise accuracy on ``pairs`` pairs of a split."""

    checkpoint: str
    version: str
    pairs: int
    prmu: dict[str, float]
    user_blind: dict[str, float]


def _encoder(cfg: TagPRConfig) -> SentenceEncoder:
    p = cfg.prmu
    return SentenceEncoder(p.encoder, p.max_length, cache_size=p.embedding_cache, allow_hub=cfg.model.allow_hub)


def train(cfg: TagPRConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
          run_dir: Path | None = None) -> PRMUResult:
    """Train a PRMU and the user-blind baseline on the train split, evaluate both on held-out dev
    users, write the checkpoint (default ``<run dir>/prmu``, the baseline in its ``user_blind/``;
    a new run directory unless one is given)."""
    if cfg.prmu.include_reasoning:
        raise ConfigError("config", "prmu.include_reasoning",
                          "the PRMU trains on gold answers, which carry no reasoning; a PRMU that scored the "
                          "reasoning would be scoring text it never saw in training (leave it false)")
    from actors.cluster import connect
    from actors.prmu_trainer import train_on_ray

    start = time.perf_counter()
    run_dir = run_dir or new_run_dir(cfg, "prmu")
    out = Path(out) if out else run_dir / "prmu"
    d, p = cfg.data, cfg.prmu
    encoder = _encoder(cfg)
    train_pairs, users = pairs_for_tasks(d.root, d.tasks, d.train_split, encoder, p.negatives_per_question,
                                         d.skip_invalid, p.train_users)
    dev_pairs, dev_users = pairs_for_tasks(d.root, d.tasks, d.dev_split, encoder, p.negatives_per_question,
                                           d.skip_invalid)
    user_index = {u: i for i, u in enumerate(users)}
    backbone = p.backbone or cfg.model.policy
    net = checkpoint.build_net(p, encoder.dim, len(user_index), backbone, cfg.model.allow_hub)
    data = PairData.build(net, train_pairs, encoder, user_index)
    blind_data = PairData.build(net, [pair.without_user() for pair in train_pairs], encoder, {})
    hard = sum(pair.hard for pair in train_pairs)
    log(f"prmu: {len(train_pairs)} train pairs ({hard} hard negatives, {len(users)} users), {len(dev_pairs)} dev "
        f"pairs ({len(dev_users)} held-out users), features in {time.perf_counter() - start:.0f}s")
    connect(cfg.cluster)
    ckpt = train_on_ray(p, data, blind_data, encoder.dim, user_index, p.encoder, run_dir / "ray_train", backbone)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(ckpt, out)
    trained, meta, _ = checkpoint.load(out)
    scores = evaluate(trained, _load_blind(out), dev_pairs, encoder, user_index)
    meta["metrics"]["dev_pairwise_accuracy"] = scores
    (out / checkpoint.META).write_text(json.dumps(meta, indent=1))
    encoder.save_cache(out / checkpoint.EMBEDDINGS)  # the reward service starts with these texts embedded
    result = PRMUResult(checkpoint=str(out), version=meta["version"], train_pairs=len(train_pairs),
                        dev_pairs=len(dev_pairs), seconds=round(time.perf_counter() - start, 1), **scores)
    (run_dir / "prmu_eval.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


def _load_blind(path: str | Path) -> PRMUNet:
    folder = Path(path) / checkpoint.BLIND
    if not folder.is_dir():
        raise TagPRError(f"{path} holds no user-blind baseline ({checkpoint.BLIND}/): retrain with `tagpr prmu train`")
    return checkpoint.load(folder)[0]


def eval_checkpoint(cfg: TagPRConfig, path: str | Path, split: str | None = None) -> PRMUEval:
    from tagpr.prmu.scorer import PRMUScorer

    scorer = PRMUScorer.load(path, allow_hub=cfg.model.allow_hub)  # its encoder preloads the checkpoint's embeddings
    blind = _load_blind(path)
    d = cfg.data
    pairs, _ = pairs_for_tasks(d.root, d.tasks, split or d.dev_split, scorer.encoder,
                               cfg.prmu.negatives_per_question, d.skip_invalid)
    return PRMUEval(checkpoint=str(path), version=scorer.version, pairs=len(pairs),
                    **evaluate(scorer.net, blind, pairs, scorer.encoder, scorer.user_index))


def print_scores(result: PRMUResult | PRMUEval, out) -> None:
    """The PRMU's and the user-blind model's held-out pairwise accuracy per task as a table on ``out``
    (a rich console)."""
    from rich.table import Table

    table = Table(title=f"PRMU pairwise accuracy on held-out users ({result.version})")
    for col in ("task", "PRMU", "user-blind"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task in result.prmu:
        table.add_row(task, f"{result.prmu[task]:.3f}", f"{result.user_blind[task]:.3f}")
    out.print(table)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = command.load(args)
    run_dir = new_run_dir(cfg, "prmu")
    with command.job_console(args, run_dir / "logs") as logs:
        result = train(cfg, args.out, log=logs.console.print, run_dir=run_dir)
        print_scores(result, logs.console)
        logs.console.print(f"checkpoint {result.checkpoint} ({result.seconds}s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = eval_checkpoint(command.load(args), args.checkpoint, args.split)
    print_scores(result, command.console())
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_json(), indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command.main(argv, prefix=["prmu"])


if __name__ == "__main__":
    sys.exit(main())
