"""Training checkpoints shared by the SFT trainer and the RL learner.

A checkpoint folder holds the model as an HF folder (or, with LoRA, only the adapter under
``adapter/``), the tokenizer, the strategy's optimizer state (DeepSpeed partitions per rank) and
``trainer_state.json`` (``lora``, ``base`` and what the trainer needs to continue).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from actors.train_strategy import DEEPSPEED_DIR, OPTIMIZER
from tagpr.config import LoraConfig

STATE = "trainer_state.json"
BUFFER_SNAPSHOT = "buffer.json"  # RL: the buffer at the checkpoint's step
RNG = "rng.pt"


def read_state(checkpoint: str | Path) -> dict:
    return json.loads((Path(checkpoint) / STATE).read_text())


def load_trainable(policy: str, lora: LoraConfig, resume_from: str | Path | None = None):
    """The model to train: ``policy`` (wrapped in a fresh LoRA when enabled), or the checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)

    if resume_from:
        state = read_state(resume_from)
        if state["lora"]:
            from peft import PeftModel

            return PeftModel.from_pretrained(load(state["base"]), Path(resume_from) / "adapter", is_trainable=True)
        return load(resume_from)
    model = load(policy)
    if lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    return model


def save_checkpoint(strategy, tokenizer, out: Path, lora: bool, base: str, state: dict, rank: int) -> None:
    """Every rank enters (ZeRO-3 gathers the shards); rank 0 writes the model (the policy inside the
    RL learner's :class:`ResponseLM`), tokenizer and state."""
    from tagpr.rl.forward import ResponseLM

    with strategy.full_model() as model:
        if rank == 0:
            policy = model.lm if isinstance(model, ResponseLM) else model
            policy.save_pretrained(out / "adapter" if lora else out, safe_serialization=True)
    strategy.save_state(out, rank)
    if rank == 0:
        tokenizer.save_pretrained(out)
        (out / STATE).write_text(json.dumps({**state, "lora": lora, "base": base}))


def publish_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Make the fully written folder ``tmp`` the checkpoint ``final`` by renames alone, then keep the
    ``keep`` newest siblings. A process killed at any point leaves complete checkpoints only: the
    one ``final`` replaces is renamed away before ``tmp`` takes its name, and ``*.trash`` folders
    are never read (the next publish removes them)."""
    trash = final.with_name(f".{final.name}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    if final.exists():  # the same step written again after a crash
        final.rename(trash)
    tmp.rename(final)
    for old in sorted(final.parent.glob("step-*"))[:-keep]:
        old.rename(old.with_name(f".{old.name}.trash"))
    for stale in final.parent.glob(".*.trash"):
        shutil.rmtree(stale, ignore_errors=True)


def export_hf(checkpoint: Path, out: Path) -> Path:
    """An epoch checkpoint as a plain HF folder that vLLM loads (LoRA merged; the adapter kept too)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = read_state(checkpoint)
    if out.exists():
        shutil.rmtree(out)
    if state["lora"]:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(state["base"], dtype=torch.float32, local_files_only=True)
        merged = PeftModel.from_pretrained(base, checkpoint / "adapter").merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        shutil.copytree(checkpoint / "adapter", out / "adapter")
    else:
        shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns(OPTIMIZER, DEEPSPEED_DIR, BUFFER_SNAPSHOT, RNG))
    AutoTokenizer.from_pretrained(checkpoint, local_files_only=True).save_pretrained(out)
    return out
