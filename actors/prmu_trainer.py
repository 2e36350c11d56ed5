"""PRMU training on Ray Train: a TorchTrainer whose workers run ``tagpr.prmu.train.fit`` under DDP.

The driver encodes the pairs once (the sentence encoder is frozen) and puts the features in the
object store; each worker trains on its shard of pairs with gloo all-reduce, first the PRMU, then
the user-blind baseline on the same pairs, and rank 0 writes the checkpoint that Ray Train
persists (the baseline in its ``user_blind/`` subfolder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tagpr.config import PRMUConfig


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from actors.progress import report as report_progress
    from tagpr.prmu import checkpoint
    from tagpr.prmu.train import fit, score_stats

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = PRMUConfig.model_validate(config["prmu"])

    def train(user_blind: bool, data: Any, what: str) -> tuple[Any, list[dict[str, float]]]:
        torch.manual_seed(cfg.seed)
        net = checkpoint.build_net(cfg, config["dim"], len(config["user_index"]), config.get("backbone"),
                                   user_blind=user_blind)
        model = ray.train.torch.prepare_model(net) if world > 1 else net

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            report_progress(what, epoch, cfg.epochs)
            print(f"{what} {epoch}/{cfg.epochs} loss {stats['loss']:.4f}")  # the run's logs/console.log

        return net, fit(model, data, cfg, rank, world, on_epoch=on_epoch if rank == 0 else None)

    data = ray.get(config["data"])
    net, history = train(False, data, "prmu epochs")
    blind, blind_history = train(True, ray.get(config["blind_data"]), "user-blind epochs")
    metrics = {"loss": history[-1]["loss"], "user_blind_loss": blind_history[-1]["loss"], "epochs": len(history),
               "world_size": world}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            stats = score_stats(net, data, cfg.score_with_user_id)
            checkpoint.save(net, tmp, cfg, config["encoder"], config["dim"], config["user_index"],
                            {"train_loss": history}, score_stats=stats)
            checkpoint.save(blind, Path(tmp) / checkpoint.BLIND, cfg, config["encoder"], config["dim"], {},
                            {"train_loss": blind_history})
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def train_on_ray(cfg: PRMUConfig, data: Any, blind_data: Any, dim: int, user_index: dict[str, int], encoder: str,
                 storage: Path, backbone: str | None = None) -> Path:
    """Run the TorchTrainer; returns the local folder of the checkpoint it reported."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from actors.cluster import cpus_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"prmu": cfg.model_dump(mode="json"), "data": ray.put(data),
                           "blind_data": ray.put(blind_data), "dim": dim, "user_index": user_index,
                           "encoder": encoder, "backbone": backbone},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=False, resources_per_worker={
            "CPU": cpus_per_worker(cfg.num_workers)}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="prmu", storage_path=str(storage.resolve())),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("PRMU training reported no checkpoint")
    return Path(result.checkpoint.path)
