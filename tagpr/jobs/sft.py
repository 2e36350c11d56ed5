"""SFT job: tagged chains -> Ray Train -> an HF policy folder, evaluated before and after on dev.

Also the direct-answer reference (:func:`train_reference`): the same start, prompt and budget,
trained on ``<answer>{gold}</answer>`` alone, the report's stand-in for the paper's base model.

    python -m tagpr.jobs.sft [--config C] [--set k=v] [--out DIR]      (also `tagpr sft`)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tagpr.config import TagPRConfig, new_run_dir
from tagpr.errors import TagPRError
from tagpr.jobs import command
from tagpr.records import Record
from tagpr.tags import TagSet

ExampleSource = Callable[[str], list[dict[str, Any]]]  # split -> SFT examples: {task, input, profile, response}


@dataclass(frozen=True, kw_only=True)
class SFTResult(Record):
    """A fine-tuned policy (``<run dir>/{sft,reference}_eval.json``): the policy it started from, the
    exported one, Ray Train's ``trainer_state.json``, and the dev scores (``evaluate_policy``'s output)
    before and after, where they were asked for."""

    policy_in: str
    before: dict[str, Any] | None = None
    policy: str
    history: dict[str, Any]
    after: dict[str, Any] | None = None
    seconds: float


def train(cfg: TagPRConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
          run_dir: Path | None = None, evaluate: bool = True) -> SFTResult:
    """SFT on the tagged chains in ``chains.out``, scored on dev before and after."""
    from tagpr.sft.data import read_chains

    chains = Path(cfg.chains.out)
    return _fit(cfg, lambda split: read_chains(chains / f"{split}.jsonl"), "sft", out, log, run_dir,
                ("before", "after") if evaluate else ())


def train_reference(cfg: TagPRConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
                    run_dir: Path | None = None, evaluate: bool = True) -> SFTResult:
    """The direct-answer reference: ``model.policy`` fine-tuned with ``sft``'s budget on
    :func:`reference_records`, scored on dev after (before is the untrained base, which SFT already
    scores). ``sft.resume_from`` belongs to SFT and is not used."""
    cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"resume_from": None})})
    return _fit(cfg, lambda split: reference_records(cfg, split), "reference", out, log, run_dir,
                ("after",) if evaluate else ())


def reference_records(cfg: TagPRConfig, split: str) -> list[dict[str, Any]]:
    """SFT's own examples of ``split`` (the chains in ``chains.out``, as many per question) with the
    response replaced by the gold as ``<answer>{gold}</answer>``: the reference differs from SFT only
    in the reasoning, not in its questions or its number of steps."""
    from tagpr.sft.data import read_chains

    path = Path(cfg.chains.out) / f"{split}.jsonl"
    if not path.is_file():
        raise TagPRError(f"chains.out: {path} not found; the reference trains on SFT's questions, so run the "
                         "`chains` step first")
    tags = TagSet(cfg.tags)
    return [{"task": c["task"], "input": c["input"], "profile": c["profile"], "response": tags.render((), c["gold"])}
            for c in read_chains(path)]


def _fit(cfg: TagPRConfig, records: ExampleSource, name: str, out: str | Path | None, log: Callable[[str], None],
         run_dir: Path | None, evaluations: Sequence[str]) -> SFTResult:
    """Fine-tune ``model.policy`` on ``records`` (Ray Train, ``sft``'s settings) into ``out`` (default
    ``<run dir>/policy``); ``evaluations`` names the dev scores to add: "before" and/or "after"."""
    from transformers import AutoTokenizer

    from actors.checkpoints import export_hf
    from actors.cluster import connect
    from actors.progress import dev_progress
    from actors.sft_trainer import train_on_ray
    from tagpr.evaluation import evaluate_policy
    from tagpr.models import resolve_model_path
    from tagpr.sft.data import tokenize_chains

    if cfg.sft.resume_from and not (Path(cfg.sft.resume_from) / "trainer_state.json").is_file():
        raise TagPRError(f"sft.resume_from: {cfg.sft.resume_from} is not an SFT epoch checkpoint folder "
                         "(no trainer_state.json); use a <run dir>/ray_train/sft/checkpoint_* folder")
    start = time.perf_counter()
    run_dir = run_dir or new_run_dir(cfg, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = Path(out) if out else run_dir / "policy"
    policy = resolve_model_path(cfg.model.policy, cfg.model.allow_hub)
    tokenizer = AutoTokenizer.from_pretrained(policy, local_files_only=not cfg.model.allow_hub)
    tags, s = TagSet(cfg.tags), cfg.sft
    data = {}
    for split in (cfg.data.train_split, cfg.data.dev_split):
        examples = records(split)
        if split == cfg.data.dev_split and s.dev_loss_examples and len(examples) > s.dev_loss_examples:
            examples = random.Random(cfg.run.seed).sample(examples, s.dev_loss_examples)
        data[split] = d = tokenize_chains(examples, tokenizer, tags, cfg.data.prompt_profile_items, s.max_length)
        log(f"{name}: {split}: {len(d)} examples ({d.skipped_too_long} longer than {s.max_length} tokens skipped)")
    before = None
    if "before" in evaluations:
        before = evaluate_policy(policy, cfg, limit=s.eval_limit, on_task=dev_progress(f"before {name}"))
    connect(cfg.cluster)
    ckpt = train_on_ray(s, data[cfg.data.train_split], data[cfg.data.dev_split], policy, run_dir / "ray_train",
                        cfg.run.seed)
    export_hf(ckpt, out)
    history = json.loads((ckpt / "trainer_state.json").read_text())
    once = ", each prompt once for its chains" if history.get("shared_prefix") else ""
    log(f"{name}: epoch {history['epoch']}: train loss {history['train_loss']:.4f}, "
        f"{history.get('tokens_per_s', 0.0):.0f} tokens/s{once}")
    after = None
    if "after" in evaluations:
        after = evaluate_policy(str(out.resolve()), cfg, limit=s.eval_limit, on_task=dev_progress(f"after {name}"))
    result = SFTResult(policy_in=policy, before=before, policy=str(out), history=history, after=after,
                       seconds=round(time.perf_counter() - start, 1))
    (run_dir / f"{name}_eval.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


def cmd_train(args: argparse.Namespace) -> int:
    from tagpr.lamp.tasks import get_task

    cfg = command.load(args)
    run_dir = new_run_dir(cfg, "sft")
    with command.job_console(args, run_dir / "logs") as logs:
        out = logs.console
        result = train(cfg, args.out, log=out.print, run_dir=run_dir)
        for when, r in (("before", result.before), ("after", result.after)):
            if r is not None:
                out.print(f"{when} SFT: format valid {r['format_valid']:.3f}, tag score {r['tag_score']:.3f}, "
                          + ", ".join(f"{t} {v[get_task(t).primary_metric]:.3f}" for t, v in r["tasks"].items()))
        out.print(f"policy {result.policy} ({result.seconds}s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command.main(argv, prefix=["sft"])


if __name__ == "__main__":
    sys.exit(main())
