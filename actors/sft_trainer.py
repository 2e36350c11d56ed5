"""SFT on Ray Train: a TorchTrainer whose workers run ``tagpr.sft.train`` under DDP or DeepSpeed
ZeRO-2/3 (``sft.strategy``; a GPU each with NCCL where the cluster has GPUs, else gloo on CPUs).

The driver tokenizes once and puts the data in the object store. Every epoch the workers write an
epoch checkpoint (HF model folder from rank 0, optimizer state from every rank that holds a part)
that Ray Train persists; a run given ``sft.resume_from`` continues from such a folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from actors.checkpoints import load_trainable, read_state, save_checkpoint
from tagpr.config import SFTConfig


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from actors.progress import report as report_progress
    from actors.train_strategy import STRATEGIES
    from tagpr.rl.forward import ResponseLM
    from tagpr.sft.train import sft_module, train_epochs

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = SFTConfig.model_validate(config["sft"])
    train, dev = ray.get(config["train"]), ray.get(config["dev"])
    tokenizer = AutoTokenizer.from_pretrained(cfg.resume_from or config["policy"], local_files_only=True)
    torch.manual_seed(config["seed"])
    model = sft_module(load_trainable(config["policy"], cfg.lora, cfg.resume_from), cfg, train)
    strategy = STRATEGIES.get(cfg.strategy)(model, cfg, cfg.lr, cfg.weight_decay,
                                            cfg.batch_size, world)
    start_epoch = 0
    if cfg.resume_from:
        strategy.load_state(Path(cfg.resume_from))
        start_epoch = read_state(cfg.resume_from)["epoch"]

    by_prompt = isinstance(model, ResponseLM)
    shared = by_prompt and model.shared_prefix

    def report(epoch: int, stats: dict) -> None:
        stats = {**stats, "shared_prefix": shared}
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(strategy, tokenizer, Path(tmp), cfg.lora.enabled, config["policy"],
                            {"epoch": epoch, **stats}, rank)
            ray.train.report(stats, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    on_step = (lambda done, total: report_progress("sft steps", done, total)) if rank == 0 else None
    train_epochs(strategy, train, dev, cfg, tokenizer.pad_token_id, start_epoch, rank, world, config["seed"],
                 report, log=print if rank == 0 else None, on_step=on_step, by_prompt=by_prompt)
    strategy.close()


def train_on_ray(cfg: SFTConfig, train: Any, dev: Any, policy: str, storage: Path, seed: int = 0) -> Path:
    """Run the TorchTrainer; returns the local folder of the last epoch checkpoint."""
    import ray
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from actors.cluster import train_scaling

    scaling, backend = train_scaling(cfg.num_workers, cfg.resources)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"sft": cfg.model_dump(mode="json"), "train": ray.put(train), "dev": ray.put(dev),
                           "policy": policy, "seed": seed},
        scaling_config=scaling,
        torch_config=backend,
        run_config=RunConfig(name="sft", storage_path=str(storage.resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("SFT reported no checkpoint")
    return Path(result.checkpoint.path)
