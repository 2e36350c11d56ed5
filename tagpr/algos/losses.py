"""Policy losses (docs/method.md section 6) and the per-token log-probability helpers they need.

The default ``ppo_clip`` loss is PPO's clipped surrogate with clip-higher (separate lower and
upper clip ranges), truncated importance sampling (TIS) against the rollout engine's logprobs,
an optional k3 KL penalty to a reference policy, and token-level aggregation (DAPO): every
response token of the batch weighs the same, so long responses are not down-weighted the way a
per-sequence mean down-weights them.

Losses are registered by name in ``LOSSES`` and ``rl.loss`` names the one a run uses; a new loss
plugs in by registering a function with the ``PolicyLoss`` signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from tagpr.config import RLConfig
from tagpr.registry import Registry


@dataclass
class LossInputs:
    """One (micro-)batch of B responses padded to T tokens.

    ``old_logprobs`` are the learner's logprobs at the start of the step (None: the batch is used
    for a single on-policy update, so they equal ``logprobs``); ``rollout_logprobs`` are what the
    rollout engine reported when sampling (None: trust the learner's, no IS correction). Positions
    where ``mask`` is 0 may hold anything, even -inf: they never reach the loss or its gradient.
    """

    logprobs: Tensor
    advantages: Tensor
    mask: Tensor
    old_logprobs: Tensor | None = None
    rollout_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    entropy: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.logprobs.shape
        if self.logprobs.dim() != 2:
            raise ValueError(f"logprobs must be shaped (B, T), got {tuple(shape)}")
        if self.advantages.shape != shape[:1]:
            raise ValueError(f"advantages must be shaped ({shape[0]},), got {tuple(self.advantages.shape)}")
        for name in ("mask", "old_logprobs", "rollout_logprobs", "ref_logprobs", "entropy"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{name} must be shaped {tuple(shape)} like logprobs, got {tuple(value.shape)}")


class PolicyLoss(Protocol):
    def __call__(
        self, batch: LossInputs, cfg: RLConfig, *, token_normalizer: int | None = None
    ) -> tuple[Tensor, dict[str, float]]: ...


LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def _log_softmax(logits: Tensor) -> Tensor:
    # float32 because bf16 log-softmax errors of ~1e-2 would swamp the old/new ratio the clip acts on
    return torch.log_softmax(logits.float(), dim=-1)


def _gather(logp: Tensor, token_ids: Tensor) -> Tensor:
    return logp.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits: Tensor, token_ids: Tensor) -> Tensor:
    """Log-probability of each token under its logits, in float32 whatever the model's dtype.

    ``logits[..., t, :]`` must be the distribution ``token_ids[..., t]`` was drawn from (the caller
    shifts a causal LM's outputs by one).
    """
    return _gather(_log_softmax(logits), token_ids)


def token_logprobs_and_entropy(logits: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``token_logprobs`` and each position's entropy (detached, for logging collapse) from one
    log-softmax: the ``(B, T, V)`` logits are the largest tensors of a step, and passes over them
    are what a learner sharing memory bandwidth with rollout engines waits on."""
    logp = _log_softmax(logits)
    with torch.no_grad():
        p = logp.exp()
        entropy = -torch.where(p > 0, p * logp, torch.zeros_like(logp)).sum(dim=-1)
    return _gather(logp, token_ids), entropy


K3_MAX_LOG_RATIO = 10.0


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || ref): ``exp(d) - d - 1``, ``d = ref - logp``.

    Unbiased for the KL on tokens sampled from the policy, and never negative, unlike ``-d``. ``d``
    is clamped to +-``K3_MAX_LOG_RATIO``: a token the reference finds far likelier than the policy
    would otherwise give ``exp(d)`` values (and gradients) that swamp the policy term.
    """
    d = (ref_logprobs - logprobs).clamp(-K3_MAX_LOG_RATIO, K3_MAX_LOG_RATIO)
    return torch.exp(d) - d - 1


def _masked_mean(x: Tensor, keep: Tensor, n: float) -> float:
    return float(torch.where(keep, x, torch.zeros_like(x)).sum() / n) if n else 0.0


def _masked_max(x: Tensor, keep: Tensor) -> float:
    return float(x[keep].max()) if bool(keep.any()) else 0.0


def ppo_clip_loss(
    batch: LossInputs,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    is_cap: float = 2.0,
    kl_coef: float = 0.0,
    token_normalizer: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate with TIS and k3 KL, summed over unmasked tokens and divided once.

    Per token: ``-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) * w + kl_coef * k3`` with
    ``r = exp(logp - old)`` and ``w = min(exp(old - rollout), is_cap)`` detached: ``w`` corrects for
    the sample coming from the (possibly stale) rollout policy, and the cap bounds its variance.
    The KL term is not IS-weighted; it is a regulariser, not an estimate under the sampler.

    The sum is divided by the batch's unmasked-token count, or by ``token_normalizer`` when given:
    with gradient accumulation pass the step's global count to every micro-batch, so the summed
    micro-batch losses equal the loss of the whole step. The stats are this batch's per-token means
    (whatever the normalizer), plus ``tokens`` to weight them when averaging micro-batches.
    """
    if token_normalizer is not None and token_normalizer < 1:
        raise ValueError(f"token_normalizer must be a positive token count, got {token_normalizer}")
    logp = batch.logprobs
    keep = batch.mask.bool()
    zero = torch.zeros_like(logp)

    def masked(x: Tensor) -> Tensor:
        """Zero the padding before exp(), so a -inf there cannot turn into NaN."""
        return torch.where(keep, x, zero)

    old = logp.detach() if batch.old_logprobs is None else batch.old_logprobs.detach().to(logp.dtype)
    adv = batch.advantages.detach().to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(masked(logp - old))
    clipped_ratio = ratio.clamp(1 - clip_eps_low, 1 + clip_eps_high)
    if batch.rollout_logprobs is None:
        raw_w = torch.ones_like(logp)
    else:
        raw_w = torch.exp(masked(old - batch.rollout_logprobs.detach().to(logp.dtype)))
    w = raw_w.clamp(max=is_cap)
    pg = -torch.minimum(ratio * adv, clipped_ratio * adv) * w
    per_token = pg
    kl = None
    if batch.ref_logprobs is not None:
        kl = k3(masked(logp), masked(batch.ref_logprobs.detach().to(logp.dtype)))
        if kl_coef:
            per_token = per_token + kl_coef * kl

    n_local = float(keep.sum())
    denom = float(token_normalizer) if token_normalizer is not None else max(n_local, 1.0)
    loss = masked(per_token).sum() / denom

    with torch.no_grad():
        is_clipped = ((adv > 0) & (ratio > 1 + clip_eps_high)) | ((adv < 0) & (ratio < 1 - clip_eps_low))
        stats = {
            "pg_loss": _masked_mean(pg, keep, n_local),
            "kl": _masked_mean(kl, keep, n_local) if kl is not None else 0.0,
            "clip_frac": _masked_mean(is_clipped.to(logp.dtype), keep, n_local),
            "ratio_mean": _masked_mean(ratio, keep, n_local),
            "ratio_max": _masked_max(ratio, keep),
            "is_weight_mean": _masked_mean(w, keep, n_local),
            "is_weight_max": _masked_max(w, keep),
            "is_capped_frac": _masked_mean((raw_w > is_cap).to(logp.dtype), keep, n_local),
            "tokens": n_local,
        }
        if batch.entropy is not None:
            stats["entropy"] = _masked_mean(batch.entropy.to(logp.dtype), keep, n_local)
    return loss, stats


@LOSSES.register("ppo_clip")
def _ppo_clip(
    batch: LossInputs, cfg: RLConfig, *, token_normalizer: int | None = None
) -> tuple[Tensor, dict[str, float]]:
    return ppo_clip_loss(
        batch,
        clip_eps_low=cfg.clip_eps_low,
        clip_eps_high=cfg.clip_eps_high,
        is_cap=cfg.is_cap,
        kl_coef=cfg.kl_coef,
        token_normalizer=token_normalizer,
    )


def policy_loss(
    batch: LossInputs, cfg: RLConfig, *, token_normalizer: int | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Run the loss that ``cfg.loss`` names."""
    return LOSSES.get(cfg.loss)(batch, cfg, token_normalizer=token_normalizer)
