"""Group-relative advantages (docs/method.md section 6).

An estimator maps the rewards of a step, shaped ``(num_groups, G)``, to one advantage per sample
of the same shape; the loss broadcasts each over its sample's tokens. Estimators are registered by
name in ``ADVANTAGES`` and ``rl.advantage`` names the one a run uses, so a new estimator plugs in
by registering a function with the ``AdvantageEstimator`` signature.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from tagpr.config import RLConfig
from tagpr.registry import Registry


class AdvantageEstimator(Protocol):
    def __call__(self, rewards: Tensor, cfg: RLConfig) -> Tensor: ...


ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")


def _check_rewards(rewards: Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(f"rewards must be shaped (num_groups, G), got {tuple(rewards.shape)}")


def grpo_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """``(r - group mean) / (group std + eps)``, or only ``r - group mean`` without ``scale_by_std``.

    The std is the population std (``correction=0``): the group is all there is to normalise, and
    it gives every non-constant group unit variance whatever G is (two samples 0/1 get -1/+1).
    A constant group has zero centred rewards, so it gets zero advantages, never NaN.
    """
    _check_rewards(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=1, correction=0, keepdim=True) + eps)


@ADVANTAGES.register("grpo")
def _grpo(rewards: Tensor, cfg: RLConfig) -> Tensor:
    return grpo_advantages(rewards, scale_by_std=cfg.scale_by_std, eps=cfg.std_eps)


def compute_advantages(rewards: Tensor, cfg: RLConfig) -> Tensor:
    """Run the estimator that ``cfg.advantage`` names."""
    return ADVANTAGES.get(cfg.advantage)(rewards, cfg)
