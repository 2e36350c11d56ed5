"""One GRPO learner step on one rank, against a stepper (``forward``, ``backward``,
``optimizer_step``): plain torch in unit tests, DDP or DeepSpeed on Ray Train workers.

A step is ``rl.ppo_epochs`` passes over the step's rows, each split into ``rl.mini_batches``
optimizer updates. The logprobs every update's ratio is taken against ("old") come from one no-grad
pass before the first update, so from the second update on the ratio moves away from 1 and the
clip (with clip-higher) acts; with one update per step the ratio is 1 and only the importance
weight against the rollout engine corrects for staleness. The KL reference is scored in the same
pass, once per step. Every pass scores the policy at the rollout temperature (logits divided by it),
the distribution the samples were drawn from, as the rollout engine reports its logprobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from tagpr.algos import LossInputs, policy_loss, token_logprobs, token_logprobs_and_entropy
from tagpr.config import RLConfig
from tagpr.rl.batch import MicroBatching, PolicyBatch, Row, by_prompt, collate

# per-token loss statistics; ranks and micro-batches combine them weighted by tokens
LOSS_STATS = ("pg_loss", "kl", "clip_frac", "ratio_mean", "is_weight_mean", "is_capped_frac", "entropy")


class RLStepper(Protocol):
    device: torch.device

    def forward(self, **batch): ...

    def backward(self, loss: torch.Tensor, last: bool = True) -> None: ...

    def optimizer_step(self) -> None: ...


def mini_batches(rows: Sequence[Row], n: int) -> list[list[Row]]:
    """The step's rows in ``n`` mini-batches of whole groups, groups dealt in turn (fewer
    mini-batches when there are fewer groups), the same on every rank: each is one optimizer
    update. Whole groups keep a prompt's samples together, so its prefix is shared by all of them."""
    groups = by_prompt(rows)
    n = max(1, min(n, len(groups)))
    return [[r for g in groups[i::n] for r in g] for i in range(n)]


def _response_logits(model, b: PolicyBatch, temperature: float) -> torch.Tensor:
    """``model``: a :class:`tagpr.rl.forward.ResponseLM`, or a stepper's forward over one."""
    logits = model(**b.model_inputs())
    return logits / temperature if temperature != 1.0 else logits


def _response_logprobs(model, b: PolicyBatch, temperature: float) -> torch.Tensor:
    return token_logprobs(_response_logits(model, b, temperature), b.response_ids)


@torch.no_grad()
def score_rows(stepper: RLStepper, minis: Sequence[Sequence[Row]], micro: MicroBatching, pad_id: int, rank: int,
               world: int, old: bool, reference: torch.nn.Module | None, temperature: float = 1.0) -> None:
    """Set ``old_logprobs`` (the policy before the step's first update) and ``ref_logprobs`` on the
    rows this rank trains on, in the chunks it will train them in (every rank runs the same passes)."""
    for mini in minis:
        for chunk in micro.split(mini, rank, world):
            b = collate(chunk, pad_id).to(stepper.device)
            old_lp = _response_logprobs(stepper.forward, b, temperature) if old else None
            ref_lp = _response_logprobs(reference, b, temperature) if reference is not None else None
            for i, row in enumerate(chunk):
                n = len(row.traj.token_ids)
                if old_lp is not None:
                    row.old_logprobs = old_lp[i, :n].cpu()
                if ref_lp is not None:
                    row.ref_logprobs = ref_lp[i, :n].cpu()


def train_step(stepper: RLStepper, rows: Sequence[Row], cfg: RLConfig, micro: MicroBatching, pad_id: int,
               rank: int = 0, world: int = 1, reference: torch.nn.Module | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """Train on this rank's shard of ``rows`` (every rank passes the same rows): ``cfg.ppo_epochs`` x
    ``cfg.mini_batches`` optimizer updates, each over the micro-batches ``micro`` splits it into. Returns
    ``[sum of stat * tokens for LOSS_STATS..., tokens]`` (float64) over every update, to be summed
    over ranks and divided by the last entry.

    Each update's loss is divided by its mini-batch's token count over all ranks, and multiplied by
    ``world`` because DDP and ZeRO average gradients over ranks: each update's gradient is that of the
    token-level mean over its mini-batch, however it is split into micro-batches and ranks.
    """
    minis = mini_batches(rows, cfg.mini_batches)
    several = cfg.ppo_epochs * len(minis) > 1
    if several or reference is not None:
        score_rows(stepper, minis, micro, pad_id, rank, world, several, reference, temperature)
    sums = torch.zeros(len(LOSS_STATS) + 1, dtype=torch.float64)
    for _ in range(cfg.ppo_epochs):
        for mini in minis:
            tokens = sum(len(r.traj.token_ids) for r in mini if r.weight > 0)
            chunks = micro.split(mini, rank, world)
            for i, chunk in enumerate(chunks):
                b = collate(chunk, pad_id).to(stepper.device)
                logprobs, entropy = token_logprobs_and_entropy(_response_logits(stepper.forward, b, temperature),
                                                               b.response_ids)
                batch = LossInputs(logprobs, b.advantages, b.response_mask, old_logprobs=b.old_logprobs,
                                   rollout_logprobs=b.rollout_logprobs, ref_logprobs=b.ref_logprobs,
                                   entropy=entropy)
                loss, st = policy_loss(batch, cfg, token_normalizer=max(tokens, 1))
                stepper.backward(loss * world, last=i == len(chunks) - 1)
                sums += torch.tensor([st.get(k, 0.0) * st["tokens"] for k in LOSS_STATS] + [st["tokens"]],
                                     dtype=torch.float64)
            stepper.optimizer_step()
    return sums
