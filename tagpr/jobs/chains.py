"""Tagged-chain generation on Ray Data: generate -> label -> filter -> JSONL + stats + plot.

    python -m tagpr.jobs.chains [--config C] [--set k=v]      (also `tagpr chains generate`)

Per split, ``<chains.out>/{split}.jsonl`` holds the kept chains and ``{split}.done`` the ids
already processed (kept or dropped), so a rerun skips them: the job resumes where it stopped.
``{split}.source`` fingerprints what the chains were made from (the split's LaMP files, the tag set,
the prompt's profile items and the chains settings); when it differs, the split starts over, since
ids alone would resume stale chains of rewritten data.
Teacher and labeler run inside a pool of Ray Data actors (one actor, or ``chains.vllm.num_engines``
engine actors with their CPUs/GPUs for the ``vllm`` teacher); the filter runs on the driver
because de-duplication is global.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tagpr.config import TagPRConfig
from tagpr.jobs import command
from tagpr.records import Record


@dataclass(frozen=True, kw_only=True)
class ChainsSplit(Record):
    """A split's chains file after this run: the chains it holds (per task, and their tag sections), and
    what this run kept and dropped, by reason."""

    chains: int
    kept_this_run: int
    dropped_this_run: dict[str, int]
    per_task: dict[str, int]
    tag_distribution: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class ChainsResult(Record):
    """Per split, its :class:`ChainsSplit` (``<chains.out>/stats.json``)."""

    splits: dict[str, ChainsSplit]

    def to_json(self) -> dict[str, Any]:
        return {split: s.to_json() for split, s in self.splits.items()}


class GenerateAndLabel:
    """Ray Data batch UDF: teacher samples for each question, then tagged by the labeler."""

    def __init__(self, config: dict[str, Any]):
        from tagpr.chains.labelers import LABELERS
        from tagpr.chains.teachers import TEACHERS

        cfg = TagPRConfig.model_validate(config)
        self.n = cfg.chains.samples_per_question
        self.teacher = TEACHERS.get(cfg.chains.teacher).from_config(cfg)
        self.labeler = LABELERS.get(cfg.chains.labeler).from_config(cfg, self.teacher)

    def __call__(self, batch):
        import pandas as pd

        from tagpr.chains.teachers import split_answer
        from tagpr.lamp.io import Prompt

        reqs = [Prompt(r.id, r.task, r.input, tuple(json.loads(r.profile)), r.gold, r.user_id or None)
                for r in batch.itertuples()]
        outs = self.teacher.generate(reqs, self.n)
        rows, items = [], []
        for (_, r), out in zip(batch.iterrows(), outs):
            failures = list(out.errors.elements()) or ([] if out.samples else ["no sample"])
            for reason in failures:  # one row per failed sample, so the stats count each by reason
                rows.append({**r.to_dict(), "response": "", "error": reason})
                items.append(("", None))
            for sample in out.samples:
                reasoning, answer = split_answer(sample)
                rows.append({**r.to_dict(), "response": "", "error": "" if answer else "no answer"})
                items.append((reasoning, answer))
        todo = [i for i, (_, answer) in enumerate(items) if answer]
        for i, text in zip(todo, self.labeler.label([items[i] for i in todo])):
            if text is None:
                rows[i]["error"] = "label failed"
            else:
                rows[i]["response"] = text
        return pd.DataFrame(rows)


def question_rows(cfg: TagPRConfig, split: str, done: set[str]) -> list[dict[str, Any]]:
    """The split's questions not in ``done``, as rows for :class:`GenerateAndLabel`."""
    from tagpr.lamp.io import load_split

    rows = []
    for task in cfg.data.tasks:
        s = load_split(cfg.data.root, task, split, cfg.data.skip_invalid)
        for q in s.questions:
            if q.key not in done:
                rows.append({"key": q.key, "id": q.id, "task": task, "input": q.input, "gold": q.gold,
                             "user_id": q.user_id or "", "profile": json.dumps(list(q.profile))})
    return rows


def source_fingerprint(cfg: TagPRConfig, split: str) -> str:
    """What a split's chains depend on, hashed: its questions and outputs files for every task, the
    tag set, the profile items a prompt shows, the chains settings that shape a chain, and the
    filter's rules."""
    from tagpr.chains.filter import ChainFilter
    from tagpr.lamp.io import split_paths

    h = hashlib.sha256()
    for task in cfg.data.tasks:
        for path in split_paths(cfg.data.root, task, split):
            h.update(path.name.encode())
            h.update(path.read_bytes() if path.exists() else b"")
    settings = cfg.chains.model_dump(mode="json", exclude={"out", "batch_size"})
    h.update(json.dumps([settings, cfg.tags.model_dump(mode="json"), cfg.data.prompt_profile_items,
                         cfg.reward.generation_metric, ChainFilter.VERSION], sort_keys=True).encode())
    return h.hexdigest()


def _restart_if_stale(out: Path, split: str, fingerprint: str, log: Callable[[str], None]) -> None:
    """Drop a split's chains and done ids when they were made from other sources (or predate the
    fingerprint), and record the current one."""
    files = [out / f"{split}.jsonl", out / f"{split}.done"]
    source = out / f"{split}.source"
    stale = source.read_text().strip() != fingerprint if source.exists() else any(f.exists() for f in files)
    if stale:
        log(f"chains {split}: the data or chains settings changed since {out} was written; starting over")
        for f in files:
            f.unlink(missing_ok=True)
    source.write_text(fingerprint + "\n")


def generate(cfg: TagPRConfig, splits: Sequence[str] | None = None,
             log: Callable[[str], None] = print) -> ChainsResult:
    import ray

    from actors.cluster import connect
    from tagpr.chains.filter import ChainFilter
    from tagpr.chains.teachers import TEACHERS
    from tagpr.tags import TagSet

    out = Path(cfg.chains.out)
    out.mkdir(parents=True, exist_ok=True)
    # Ray workers do not share the driver's working directory.
    teacher_model = Path(cfg.chains.vllm.model)
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"root": str(Path(cfg.data.root).resolve())}),
        "chains": cfg.chains.model_copy(update={"vllm": cfg.chains.vllm.model_copy(update={
            "model": str(teacher_model.resolve()) if teacher_model.exists() else str(teacher_model)})})})
    pool_size, resources = TEACHERS.get(cfg.chains.teacher).pool(cfg)
    tags = TagSet(cfg.tags)
    connect(cfg.cluster)
    summary: dict[str, ChainsSplit] = {}
    for split in splits or [cfg.data.train_split, cfg.data.dev_split]:
        start = time.perf_counter()
        _restart_if_stale(out, split, source_fingerprint(cfg, split), log)
        chains_path, done_path = out / f"{split}.jsonl", out / f"{split}.done"
        done = set(done_path.read_text().split()) if done_path.exists() else set()
        flt = ChainFilter(tags, cfg.chains.min_score, cfg.reward.generation_metric)
        if chains_path.exists():
            flt.seen.update(flt.key(c["id"], c["task"], c["response"]) for c in map(json.loads, chains_path.open()))
        todo = question_rows(cfg, split, done)
        log(f"chains {split}: {len(todo)} questions to do, {len(done)} already done")
        if todo:
            ds = ray.data.from_items(todo).map_batches(
                GenerateAndLabel, fn_constructor_kwargs={"config": cfg.model_dump(mode="json")},
                batch_size=cfg.chains.batch_size, batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=pool_size), **resources)
            with chains_path.open("a") as chains, done_path.open("a") as done_file:
                for batch in ds.iter_batches(batch_size=cfg.chains.batch_size, batch_format="pandas"):
                    for r in batch.to_dict("records"):
                        if r["error"]:
                            flt.stats.dropped[r["error"]] += 1
                        elif not flt.keep([r]):
                            continue
                        else:
                            chains.write(json.dumps({k: r[k] for k in ("id", "task", "input", "gold", "user_id",
                                                                          "profile", "response")}) + "\n")
                    done_file.write("".join(f"{k}\n" for k in dict.fromkeys(batch["key"])))
                    chains.flush()
                    done_file.flush()
        summary[split] = _stats(cfg, chains_path, flt, time.perf_counter() - start)
    result = ChainsResult(summary)
    (out / "stats.json").write_text(json.dumps(result.to_json(), indent=1))
    _plot(summary, out / "tag_distribution.png")
    return result


def _stats(cfg: TagPRConfig, path: Path, flt, seconds: float) -> ChainsSplit:
    from tagpr.tags import TagSet

    chains = [json.loads(line) for line in path.open()] if path.exists() else []
    tags = TagSet(cfg.tags)
    return ChainsSplit(chains=len(chains), kept_this_run=flt.stats.kept, dropped_this_run=dict(flt.stats.dropped),
                       per_task=dict(Counter(c["task"] for c in chains)),
                       tag_distribution=dict(tags.distribution([c["response"] for c in chains])),
                       seconds=round(seconds, 1))


def _plot(summary: dict[str, ChainsSplit], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(len(summary), 1)
    for i, (split, s) in enumerate(summary.items()):
        names = list(s.tag_distribution)
        ax.bar([x + i * width for x in range(len(names))], list(s.tag_distribution.values()), width, label=split)
        ax.set_xticks([x + width * (len(summary) - 1) / 2 for x in range(len(names))], names, rotation=30,
                      ha="right", fontsize=8)
    ax.set_ylabel("sections")
    ax.set_title("Tag distribution of kept chains")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = command.load(args)
    with command.job_console(args, Path(cfg.chains.out) / "logs") as logs:
        result = generate(cfg, log=logs.console.print)
        for split, s in result.splits.items():
            logs.console.print(f"{split}: {s.chains} chains ({s.kept_this_run} kept this run, dropped "
                               f"{s.dropped_this_run}) in {s.seconds}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command.main(argv, prefix=["chains", "generate"])


if __name__ == "__main__":
    sys.exit(main())
