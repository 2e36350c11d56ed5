"""SFT job: tagged chains -> Ray Train -> an HF policy folder, evaluated before and after on dev.

    python -m tagpr.jobs.sft [--config C] [--set k=v] [--out DIR]      (also `tagpr sft`)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from tagpr.config import TagPRConfig, new_run_dir


def train(cfg: TagPRConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
          run_dir: Path | None = None, evaluate: bool = True) -> dict:
    from transformers import AutoTokenizer

    from actors.checkpoints import export_hf
    from actors.cluster import connect
    from actors.sft_trainer import train_on_ray
    from tagpr.errors import TagPRError
    from tagpr.models import resolve_model_path
    from tagpr.sft.data import pack, read_chains, tokenize_chains
    from tagpr.tags import TagSet

    if cfg.sft.resume_from and not (Path(cfg.sft.resume_from) / "trainer_state.json").is_file():
        raise TagPRError(f"sft.resume_from: {cfg.sft.resume_from} is not an SFT epoch checkpoint folder "
                         "(no trainer_state.json); use a <run dir>/ray_train/sft/checkpoint_* folder")
    start = time.perf_counter()
    run_dir = run_dir or new_run_dir(cfg, "sft")
    out = Path(out) if out else run_dir / "policy"
    policy = resolve_model_path(cfg.model.policy, cfg.model.allow_hub)
    tokenizer = AutoTokenizer.from_pretrained(policy, local_files_only=not cfg.model.allow_hub)
    tags, s = TagSet(cfg.tags), cfg.sft
    chains = Path(cfg.chains.out)
    data = {}
    for split in (cfg.data.train_split, cfg.data.dev_split):
        d = tokenize_chains(read_chains(chains / f"{split}.jsonl"), tokenizer, tags, cfg.data.prompt_profile_items,
                            s.max_length)
        data[split] = pack(d, s.max_length) if s.packing and split == cfg.data.train_split else d
        log(f"sft: {split}: {len(d)} chains ({d.skipped_too_long} longer than {s.max_length} tokens skipped)")
    result: dict = {"policy_in": policy}
    if evaluate:
        from actors.progress import dev_progress
        from tagpr.evaluation import evaluate_policy

        result["before"] = evaluate_policy(policy, cfg, limit=s.eval_limit, on_task=dev_progress("before SFT"))
    connect(cfg.cluster)
    ckpt = train_on_ray(s, data[cfg.data.train_split], data[cfg.data.dev_split], policy, run_dir / "ray_train",
                        cfg.run.seed)
    export_hf(ckpt, out)
    result["policy"] = str(out)
    result["history"] = json.loads((ckpt / "trainer_state.json").read_text())
    if evaluate:
        result["after"] = evaluate_policy(str(out.resolve()), cfg, limit=s.eval_limit,
                                          on_task=dev_progress("after SFT"))
    result["seconds"] = round(time.perf_counter() - start, 1)
    (run_dir / "sft_eval.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from tagpr.cli import main as cli_main

    return cli_main(["sft", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
