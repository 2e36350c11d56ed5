"""SFT on Ray Train: a TorchTrainer whose workers run ``tagpr.sft.train`` under DDP or DeepSpeed
ZeRO-2/3 (``sft.strategy``; gloo on CPUs).

The driver tokenizes once and puts the data in the object store. Every epoch the workers write an
epoch checkpoint (HF model folder from rank 0, optimizer state from every rank that holds a part)
that Ray Train persists; a run given ``sft.resume_from`` continues from such a folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from actors.train_strategy import DEEPSPEED_DIR, OPTIMIZER
from tagpr.config import SFTConfig

STATE = "trainer_state.json"


def _load_model(policy: str, cfg: SFTConfig):
    """The model to train: the policy (wrapped in a fresh LoRA when enabled), or ``resume_from``."""
    import torch
    from transformers import AutoModelForCausalLM

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)

    if cfg.resume_from:
        state = json.loads((Path(cfg.resume_from) / STATE).read_text())
        if state["lora"]:
            from peft import PeftModel

            return PeftModel.from_pretrained(load(state["base"]), Path(cfg.resume_from) / "adapter",
                                             is_trainable=True)
        return load(cfg.resume_from)
    model = load(policy)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
    return model


def save_epoch(strategy, tokenizer, out: Path, cfg: SFTConfig, base: str, state: dict, rank: int) -> None:
    """An epoch checkpoint: the model (or, with LoRA, only the adapter), tokenizer, optimizer, state."""
    with strategy.full_model() as model:
        if rank == 0:
            model.save_pretrained(out / "adapter" if cfg.lora.enabled else out, safe_serialization=True)
    strategy.save_state(out, rank)
    if rank == 0:
        tokenizer.save_pretrained(out)
        (out / STATE).write_text(json.dumps({**state, "lora": cfg.lora.enabled, "base": base}))


def export_hf(checkpoint: Path, out: Path) -> Path:
    """An epoch checkpoint as a plain HF folder that vLLM loads (LoRA merged; the adapter kept too)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = json.loads((checkpoint / STATE).read_text())
    if out.exists():
        shutil.rmtree(out)
    if state["lora"]:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(state["base"], dtype=torch.float32, local_files_only=True)
        merged = PeftModel.from_pretrained(base, checkpoint / "adapter").merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        shutil.copytree(checkpoint / "adapter", out / "adapter")
    else:
        shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns(OPTIMIZER, DEEPSPEED_DIR))
    AutoTokenizer.from_pretrained(checkpoint, local_files_only=True).save_pretrained(out)
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from actors.train_strategy import STRATEGIES
    from tagpr.sft.train import train_epochs

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = SFTConfig.model_validate(config["sft"])
    train, dev = ray.get(config["train"]), ray.get(config["dev"])
    tokenizer = AutoTokenizer.from_pretrained(cfg.resume_from or config["policy"], local_files_only=True)
    torch.manual_seed(config["seed"])
    strategy = STRATEGIES.get(cfg.strategy)(_load_model(config["policy"], cfg), cfg, cfg.lr, cfg.weight_decay,
                                            cfg.batch_size, world)
    start_epoch = 0
    if cfg.resume_from:
        strategy.load_state(Path(cfg.resume_from))
        start_epoch = json.loads((Path(cfg.resume_from) / STATE).read_text())["epoch"]

    def report(epoch: int, stats: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save_epoch(strategy, tokenizer, Path(tmp), cfg, config["policy"], {"epoch": epoch, **stats}, rank)
            ray.train.report(stats, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    train_epochs(strategy, train, dev, cfg, tokenizer.pad_token_id, start_epoch, rank, world, config["seed"],
                 report, log=print if rank == 0 else None)
    strategy.close()


def train_on_ray(cfg: SFTConfig, train: Any, dev: Any, policy: str, storage: Path, seed: int = 0) -> Path:
    """Run the TorchTrainer; returns the local folder of the last epoch checkpoint."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from actors.cluster import cpus_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"sft": cfg.model_dump(mode="json"), "train": ray.put(train), "dev": ray.put(dev),
                           "policy": policy, "seed": seed},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=False, resources_per_worker={
            "CPU": cpus_per_worker(cfg.num_workers)}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="sft", storage_path=str(storage.resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("SFT reported no checkpoint")
    return Path(result.checkpoint.path)
