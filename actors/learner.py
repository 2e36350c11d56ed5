"""The policy learner: GRPO steps on Ray Train workers (DDP or DeepSpeed ZeRO-2/3, LoRA optional).

One TorchTrainer run per RL stage (the controller starts them). Each step, rank 0 takes one step's
groups from the TrajectoryBuffer and broadcasts them; every rank trains on its shard in
``learner.grad_accum`` micro-batches; every ``learner.sync_every`` steps rank 0 publishes the
weights (only the adapter when training LoRA) as the next version, and the rollout workers load it
before their next prompt. Version ``v`` is the policy after ``v`` learner steps (each one
``rl.ppo_epochs`` x ``rl.mini_batches`` optimizer updates).

Checkpoints (every ``learner.checkpoint_every`` steps and at the stage's end, in
``<run dir>/checkpoints``, written under a temporary name and renamed once complete) hold the
model, the optimizer, the learner state and the buffer's snapshot taken at the same step. A run always starts
by rewinding the buffer to the snapshot that matches its weights (its checkpoint's; for the job's
first run, the empty buffer's) and publishing those weights, so a worker crash retried by Ray
Train's FailureConfig, or a resumed job, trains on every prompt exactly once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from actors.checkpoints import BUFFER_SNAPSHOT, RNG, load_trainable, publish_checkpoint, read_state, save_checkpoint
from actors.cluster import pin_cpus
from actors.faults import crash_point
from actors.progress import report as report_progress
from tagpr.config import TagPRConfig
from tagpr.rl.learner_state import LearnerState, step_metrics

# not print: Ray Train patches print into its logger and also tees it to a wrapped stdout, so each
# progress line reached the driver twice
log = logging.getLogger(__name__)


def _take(buffer, timeout_s: float) -> tuple[list, float]:
    """One step's groups, and the seconds spent waiting for them."""
    import ray

    start = time.perf_counter()
    while (groups := ray.get(buffer.take.remote(wait_s=0.5))) is None:  # the buffer holds the call until ready
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"no complete step of groups in {timeout_s:.0f} s: are rollout workers running? "
                               f"buffer: {ray.get(buffer.stats.remote())}")
    return groups, time.perf_counter() - start


class _Publisher:
    """Rank 0's side of weight sync: full weights through the configured transport, or the LoRA
    adapter as a folder under the run directory; keeps the previous version alive for late loaders."""

    def __init__(self, cfg: TagPRConfig, buffer, run_dir: Path):
        from actors.weights import TRANSPORTS

        self.buffer, self.run_dir, self.lora = buffer, run_dir, cfg.learner.lora.enabled
        self.transport = TRANSPORTS.get(cfg.rollout.weight_transport)()
        self.live: list = []

    def publish(self, model, version: int) -> float:
        import ray

        from actors.weights import publish_adapter

        start = time.perf_counter()
        if self.lora:
            folder = self.run_dir / "adapters" / f"v{version}"
            model.save_pretrained(folder, safe_serialization=True)
            update = publish_adapter(folder, version)
        else:
            update = self.transport.publish(((n, p.detach()) for n, p in model.state_dict().items()), version)
        ray.get(self.buffer.publish.remote(update))
        self.live.append(update)
        while len(self.live) > 2:
            old = self.live.pop(0)
            if old.kind == "lora":
                shutil.rmtree(old.payload, ignore_errors=True)
            else:
                self.transport.release(old)
        return time.perf_counter() - start


CHECKPOINTS = "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints`` (written under a temporary name
    and renamed when every rank has written its part, so a cut-off write is never picked)."""
    done = sorted((run_dir / CHECKPOINTS).glob("step-*"))
    return done[-1] if done else None


def _start_point(config: dict[str, Any]) -> str | None:
    """Where a learner run starts: the run directory's newest checkpoint (this stage's after a
    crash, the previous stage's at a stage start, the interrupted run's on ``--resume``), else
    ``resume_from``, else the policy."""
    newest = latest_checkpoint(Path(config["run_dir"]))
    return str(newest) if newest else config.get("resume_from")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.metrics import RunMetrics
    from actors.train_strategy import STRATEGIES
    from tagpr.rl.batch import MicroBatching, rows_from_groups
    from tagpr.rl.forward import ResponseLM, response_lm
    from tagpr.rl.learn import LOSS_STATS, mini_batches, train_step
    from tagpr.schedule import lr_at

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TagPRConfig.model_validate(config["cfg"])
    rl, lc = cfg.rl, cfg.learner
    pin_cpus(lc.cpu_affinity, "learner.cpu_affinity")
    stage_index, buffer, run_dir = config["stage_index"], config["buffer"], Path(config["run_dir"])
    stage = rl.stages[stage_index]
    torch.manual_seed(cfg.run.seed + rank)

    start = _start_point(config)
    state = LearnerState.start(stage_index, stage.plateau_patience, stage.plateau_delta,
                               read_state(start) if start else None)
    snapshot = config.get("snapshot")
    if start:
        if (Path(start) / BUFFER_SNAPSHOT).exists():
            snapshot = json.loads((Path(start) / BUFFER_SNAPSHOT).read_text())
        if (Path(start) / RNG).exists() and rank == 0:
            torch.set_rng_state(torch.load(Path(start) / RNG, weights_only=True))
    model = response_lm(load_trainable(config["policy"], lc.lora, start), lc.shared_prefix)
    tokenizer = AutoTokenizer.from_pretrained(start or config["policy"], local_files_only=True)
    strategy = STRATEGIES.get(lc.strategy)(model, lc, rl.lr, lc.weight_decay, rl.prompts_per_step, world,
                                           lc.grad_accum)
    if start:
        strategy.load_state(Path(start))
    micro = MicroBatching(lc.grad_accum, lc.max_tokens_per_micro_batch, model.shared_prefix)
    reference = None
    if rl.kl_coef > 0:  # the policy the RL run started from, frozen
        reference = ResponseLM(AutoModelForCausalLM.from_pretrained(
            config["reference"], dtype=torch.float32, local_files_only=True), model.shared_prefix)
        reference.eval().requires_grad_(False).to(strategy.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    publisher = _Publisher(cfg, buffer, run_dir) if rank == 0 else None
    sink = RunMetrics(run_dir, "learner") if rank == 0 else None

    def publish() -> float:
        with strategy.full_model() as m:
            return publisher.publish(m.lm, state.step) if rank == 0 else 0.0

    if snapshot is not None:  # rewind the buffer to these weights, and hand the weights out
        if rank == 0:
            ray.get(buffer.restore.remote(snapshot))
        publish()

    def checkpoint(metrics: dict) -> None:
        """All ranks write into a temporary folder (shared storage across nodes), rank 0 renames it."""
        final = run_dir / CHECKPOINTS / f"step-{state.step:06d}"
        tmp = final.with_name(f".tmp-{final.name}")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        save_checkpoint(strategy, tokenizer, tmp, lc.lora.enabled, config["policy"], state.saved(stage.name), rank)
        crash_point(lc, "checkpoint_write", state.step, rank, run_dir)
        barrier()
        if rank == 0:
            (tmp / BUFFER_SNAPSHOT).write_text(json.dumps(ray.get(buffer.snapshot.remote())))
            torch.save(torch.get_rng_state(), tmp / RNG)
            publish_checkpoint(tmp, final, lc.keep_checkpoints)
        barrier()
        ray.train.report(metrics)

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    strategy.train(True)
    total_steps = sum(s.steps for s in rl.stages)
    last = state.stage_step >= stage.steps
    while not last:
        t0 = time.perf_counter()
        lr = lr_at(state.step, total_steps, rl) * stage.lr_scale
        strategy.set_lr(lr)
        box = [_take(buffer, lc.take_timeout_s) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(box, src=0)
        groups, waited = box[0]
        crash_point(lc, "after_take", state.step + 1, rank, run_dir)
        rows, reward_stats = rows_from_groups(groups, stage.weights, rl)
        sums = torch.zeros(len(LOSS_STATS) + 1, dtype=torch.float64)
        if rows:
            sums = train_step(strategy, rows, rl, micro, pad, rank, world, reference,
                              cfg.rollout.temperature or 1.0)
        if world > 1:
            dist.all_reduce(sums)
        stop, last = state.advance(reward_stats.get("reward_mean", 0.0), stage.steps)
        sync_s = publish() if state.publish_due(lc.sync_every, last) else 0.0
        tokens = int(sums[-1])  # response tokens trained on, over all ranks
        loss_stats = {k: float(sums[i] / max(sums[-1], 1)) for i, k in enumerate(LOSS_STATS)}
        metrics = step_metrics(state, stage.name, groups, len(rows), {**reward_stats, **loss_stats}, tokens,
                               time.perf_counter() - t0, waited, sync_s, lr, stop)
        # forward/backward passes per rank this step, what max_tokens_per_micro_batch varies
        metrics["micro_batches"] = rl.ppo_epochs * sum(len(micro.split(m, rank, world))
                                                       for m in mini_batches(rows, rl.mini_batches)) if rows else 0
        if rank == 0:
            buf = ray.get(buffer.stats.remote())
            metrics.update({"buffer_depth": buf["buffered"], "blocked_requests": buf["blocked_requests"],
                            "buffer_dropped": sum(buf["dropped"].values())})
            sink.log(state.step, metrics)
            report_progress(f"rl {stage.name} steps", state.stage_step, stage.steps)
            log.info(f"rl {stage.name} step {state.stage_step}/{stage.steps} reward {metrics['reward_mean']:.3f} "
                     f"loss {metrics['pg_loss']:.4f} clip {metrics['clip_frac']:.3f} staleness "
                     f"{metrics['staleness_mean']:.2f} wait {metrics['learner_wait_frac']:.2f} "
                     f"({metrics['step_s']:.1f} s/step)")
        if state.checkpoint_due(lc.checkpoint_every, last):
            checkpoint({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    if rank == 0:
        sink.close()
    strategy.close()


def train_stage(cfg: TagPRConfig, stage_index: int, buffer, policy: str, reference: str, run_dir: Path,
                resume_from: str | None, snapshot: dict | None) -> Path:
    """Run one stage's TorchTrainer to its end; returns the local folder of its final checkpoint."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from actors.cluster import train_scaling

    lc = cfg.learner
    stage = cfg.rl.stages[stage_index]
    scaling, backend = train_scaling(lc.num_workers, lc.resources)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "stage_index": stage_index, "buffer": buffer,
                           "policy": policy, "reference": reference, "run_dir": str(run_dir.resolve()),
                           "resume_from": resume_from, "snapshot": snapshot},
        scaling_config=scaling,
        torch_config=backend,
        run_config=RunConfig(name=f"rl-{stage_index}-{stage.name}", storage_path=str((run_dir / "ray_train").resolve()),
                             failure_config=FailureConfig(max_failures=lc.max_failures)),
    )
    trainer.fit()
    final = latest_checkpoint(run_dir)
    if final is None or read_state(final)["stage_index"] != stage_index:
        raise RuntimeError(f"RL stage {stage.name!r} wrote no final checkpoint")
    return final
