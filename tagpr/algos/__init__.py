"""The RL algorithm in pure torch: registered advantage estimators and policy losses (no Ray, no vLLM)."""

from tagpr.algos.advantages import (
    ADVANTAGES,
    AdvantageEstimator,
    compute_advantages,
    grpo_advantages,
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
    "grpo_advantages",
    "k3",
    "policy_loss",
    "ppo_clip_loss",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
