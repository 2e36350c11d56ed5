"""One GRPO optimizer step on one rank, against a stepper (``forward``, ``backward``,
``optimizer_step``): plain torch in unit tests, DDP or DeepSpeed on Ray Train workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from tagpr.algos import LossInputs, policy_loss, token_logprobs, token_logprobs_and_entropy
from tagpr.config import RLConfig
from tagpr.rl.batch import Row, collate, shard

# per-token loss statistics; ranks and micro-batches combine them weighted by tokens
LOSS_STATS = ("pg_loss", "kl", "clip_frac", "ratio_mean", "is_weight_mean", "is_capped_frac", "entropy")


class RLStepper(Protocol):
    device: torch.device

    def forward(self, **batch): ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def optimizer_step(self) -> None: ...


def train_step(stepper: RLStepper, rows: Sequence[Row], cfg: RLConfig, grad_accum: int, pad_id: int,
               rank: int = 0, world: int = 1, reference: torch.nn.Module | None = None) -> torch.Tensor:
    """Train on this rank's shard of ``rows`` (every rank passes the same rows) in ``grad_accum``
    micro-batches, then step. Returns ``[sum of stat * tokens for LOSS_STATS..., tokens]`` (float64),
    to be summed over ranks and divided by the last entry.

    The loss of every micro-batch is divided by the step's token count over all ranks, and
    multiplied by ``world`` because DDP and ZeRO average gradients over ranks: the step's gradient
    is then that of the token-level mean over the whole batch, however it is split.
    """
    sums = torch.zeros(len(LOSS_STATS) + 1, dtype=torch.float64)
    tokens = sum(len(r.traj.token_ids) for r in rows if r.weight > 0)
    for chunk in shard(rows, rank, world, grad_accum):
        b = collate(chunk, pad_id).to(stepper.device)
        logits = b.response_logits(stepper.forward(**b.model_inputs()).logits)
        ref_lp = None
        if reference is not None:
            with torch.no_grad():
                ref_lp = token_logprobs(b.response_logits(reference(**b.model_inputs()).logits), b.response_ids)
        logprobs, entropy = token_logprobs_and_entropy(logits, b.response_ids)
        batch = LossInputs(logprobs, b.advantages, b.response_mask, rollout_logprobs=b.rollout_logprobs,
                           ref_logprobs=ref_lp, entropy=entropy)
        loss, st = policy_loss(batch, cfg, token_normalizer=max(tokens, 1))
        stepper.backward(loss * world)
        sums += torch.tensor([st.get(k, 0.0) * st["tokens"] for k in LOSS_STATS] + [st["tokens"]],
                             dtype=torch.float64)
    stepper.optimizer_step()
    return sums
