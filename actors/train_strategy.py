"""How a Ray Train worker wraps its model: DDP, or DeepSpeed ZeRO-2/3; registered by name.

The SFT trainer and the RL learner write one loop against this interface: ``forward(**batch)``
(batches built on the CPU; the strategy moves them to its ``device``, the worker's GPU when it has one),
``backward(loss, last)`` per micro-batch (``last`` on an update's final one) then ``optimizer_step()``
(or ``step(loss)`` for both),
``full_model()`` (all ranks enter; under ZeRO-3 it gathers the shards), and
``save_state``/``load_state`` of the optimizer (and DeepSpeed's partitions) for resume. A resumed
DeepSpeed run needs the same number of workers as the run that saved it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import torch

from tagpr.config import TrainStrategyConfig
from tagpr.registry import Registry

OPTIMIZER = "optimizer.pt"
DEEPSPEED_DIR = "deepspeed"


def training_device() -> torch.device:
    """This worker's GPU (Ray Train makes the assigned one the only visible device), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (a GPU with bf16, a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` as bf16 where ``device`` computes it natively, else fp32. On a CPU without native bf16,
    the tiny policy's SFT step measured 16x slower in emulated bf16 than in fp32, so an explicit
    ``bf16`` there is kept but warned about."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        logging.getLogger(__name__).warning(
            "precision bf16 is emulated on this %s device (no native bf16: AVX512-BF16 or AMX on a CPU) and many "
            "times slower than fp32; precision: auto picks fp32 there", device.type)
    return precision


class TrainStrategy:
    name: str

    def __init__(self, model: torch.nn.Module, cfg: TrainStrategyConfig, lr: float, weight_decay: float,
                 micro_batch: int, world: int, grad_accum: int = 1, device: torch.device | None = None):
        self.model, self.cfg, self.world, self.grad_accum = model, cfg, world, grad_accum
        self.device = device or training_device()
        # Ray sizes torch's thread pool from the worker's logical CPUs, which may exceed the cores this
        # process may run on; more threads than cores only contend
        torch.set_num_threads(max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)))))
        self.precision = resolve_precision(cfg.precision, self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def forward(self, **batch):
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        """Accumulate one micro-batch's gradients (unscaled: the loss carries its own normalizer);
        ``last``: the update's final micro-batch, however many it has."""
        raise NotImplementedError

    def optimizer_step(self) -> None:
        """After the update's last backward: clip, step, zero the gradients."""
        raise NotImplementedError

    def step(self, loss: torch.Tensor) -> None:
        """One micro-batch that is the whole step (``grad_accum`` 1)."""
        self.backward(loss)
        self.optimizer_step()

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @contextlib.contextmanager
    def full_model(self) -> Iterator[torch.nn.Module]:
        """The unwrapped model with every parameter whole; every rank must enter."""
        yield self.model

    def save_state(self, out: Path, rank: int) -> None:
        raise NotImplementedError

    def load_state(self, src: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """End of training; collective."""


STRATEGIES: Registry[type[TrainStrategy]] = Registry("train strategy")


@STRATEGIES.register("ddp")
class DDPStrategy(TrainStrategy):
    name = "ddp"

    def __init__(self, model, cfg, lr, weight_decay, micro_batch, world, grad_accum=1, device=None):
        super().__init__(model, cfg, lr, weight_decay, micro_batch, world, grad_accum, device)
        model.to(self.device)  # in place: the parameters stay the objects the optimizer gets
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.module = model
        if world > 1:  # one process needs no Ray: unit tests and single-worker runs drive the model directly
            import ray.train.torch

            self.module = ray.train.torch.prepare_model(model)
        self._autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if self.precision == "bf16" else contextlib.nullcontext

    def forward(self, **batch):
        with self._autocast():
            return self.module(**to_device(batch, self.device))

    def backward(self, loss, last=True):
        loss.backward()

    def optimizer_step(self):
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def save_state(self, out, rank):
        if rank == 0:
            torch.save(self.optimizer.state_dict(), out / OPTIMIZER)

    def load_state(self, src):
        self.optimizer.load_state_dict(torch.load(src / OPTIMIZER, weights_only=True))


@STRATEGIES.register("deepspeed")
class DeepSpeedStrategy(TrainStrategy):
    """ZeRO-2 or ZeRO-3 over the process group Ray Train set up, with a torch AdamW (DeepSpeed's own
    Adam compiles a C++ op at first use)."""

    name = "deepspeed"

    def __init__(self, model, cfg, lr, weight_decay, micro_batch, world, grad_accum=1, device=None):
        super().__init__(model, cfg, lr, weight_decay, micro_batch, world, grad_accum, device)
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        import deepspeed

        ds_config = {
            "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": cfg.grad_clip, "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"}, "steps_per_print": 10**9,
        }
        optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.module = self.engine
        self.device = self.engine.device

    def forward(self, **batch):
        return self.engine(**to_device(batch, self.device))

    def backward(self, loss, last=True):
        # the boundary is set per micro-batch, not counted from gradient_accumulation_steps, so an
        # update may have any number of micro-batches; DeepSpeed wants step() after every backward
        # and reduces and updates at the boundary
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def optimizer_step(self):
        if not self.engine.was_step_applied():
            raise RuntimeError("optimizer_step before the update's last backward")

    def train(self, mode=True):
        self.engine.train(mode)

    @contextlib.contextmanager
    def full_model(self):
        if self.cfg.zero_stage < 3:
            yield self.engine.module
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
            yield self.engine.module

    def save_state(self, out, rank):
        self.engine.save_checkpoint(str(out / DEEPSPEED_DIR), tag="state", save_latest=False)

    def load_state(self, src):
        path, _ = self.engine.load_checkpoint(str(src / DEEPSPEED_DIR), tag="state")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {src / DEEPSPEED_DIR}")

    def close(self):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
        self.engine.destroy()
