"""The RL algorithm in pure torch: registered advantage estimators and policy losses (no Ray, no vLLM)."""

from tagpr.algos.advantages import (
    ADVANTAGES,
    AdvantageEstimator,
    compute_advantages,
    group_rewards,
    grpo_advantages,
    nonzero_variance,
)
from tagpr.algos.losses import (
    LOSSES,
    LossInputs,
    PolicyLoss,
    k3,
    policy_loss,
    ppo_clip_loss,
    token_logprobs,
    token_logprobs_and_entropy,
)

__all__ = [
    "ADVANTAGES",
    "LOSSES",
    "AdvantageEstimator",
    "LossInputs",
    "PolicyLoss",
    "compute_advantages",
    "group_rewards",
    "grpo_advantages",
    "k3",
    "nonzero_variance",
    "policy_loss",
    "ppo_clip_loss",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
