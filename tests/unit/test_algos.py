"""The RL algorithm against hand-computed numbers: GRPO advantages, the clipped TIS loss, k3, aggregation."""

import math

import pytest
import torch

from tagpr.algos import (
    ADVANTAGES,
    LOSSES,
    LossInputs,
    compute_advantages,
    grpo_advantages,
    k3,
    policy_loss,
    ppo_clip_loss,
    token_logprobs,
    token_logprobs_and_entropy,
)
from tagpr.config import RLConfig
from tagpr.errors import TagPRError

# ---------------------------------------------------------------- advantages


def test_grpo_advantages_with_std_uses_population_std():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 0.0, 1.0]])
    adv = grpo_advantages(rewards, eps=0.0)
    # group 0: mean 1.5, population std sqrt(1.25) = 1.1180340
    expected0 = [-1.3416408, -0.4472136, 0.4472136, 1.3416408]
    assert adv[0].tolist() == pytest.approx(expected0, abs=1e-6)
    # group 1: mean 0.5, population std 0.5 -> exactly +-1 (the unbiased std would give +-0.866)
    assert adv[1].tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-6)


def test_grpo_advantages_eps_and_without_std():
    rewards = torch.tensor([[0.0, 1.0]])
    assert grpo_advantages(rewards, eps=0.5)[0].tolist() == pytest.approx([-0.5, 0.5])  # 0.5 / (0.5 + 0.5)
    centred = grpo_advantages(torch.tensor([[0.0, 1.0, 2.0, 5.0]]), scale_by_std=False)
    assert centred[0].tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0])


def test_constant_group_gives_zero_advantages_not_nan():
    rewards = torch.tensor([[0.7, 0.7, 0.7, 0.7], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    adv = grpo_advantages(rewards)
    assert torch.isfinite(adv).all()
    assert adv[:2].abs().max().item() < 1e-3
    assert adv[2].tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-5)


def test_config_driven_estimator():
    rewards = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert compute_advantages(rewards, RLConfig(scale_by_std=False)).tolist() == [[-1.0, 1.0], [0.0, 0.0]]
    assert compute_advantages(rewards, RLConfig(std_eps=1.0))[0].tolist() == pytest.approx([-0.5, 0.5])


# ---------------------------------------------------------------- the clipped loss, one token at a time


def one_token(ratio: float, adv: float, **kw) -> tuple[float, float, dict[str, float]]:
    """Loss, d loss / d logp and stats for one token with old_logprobs 0 and logp = log(ratio)."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    batch = LossInputs(logp, torch.tensor([adv]), torch.ones(1, 1), old_logprobs=torch.zeros(1, 1))
    loss, stats = ppo_clip_loss(batch, **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


@pytest.mark.parametrize(
    "ratio, adv, loss, grad, clipped",
    [
        (1.1, 2.0, -2.2, -2.2, 0.0),  # inside the clip range: -A r, gradient -A r
        (1.5, 1.0, -1.28, 0.0, 1.0),  # above 1 + eps_high with A > 0: clipped to 1.28, no gradient
        (1.5, -1.0, 1.5, 1.5, 0.0),  # above the range with A < 0: the unclipped branch is the min
        (0.5, -1.0, 0.8, 0.0, 1.0),  # below 1 - eps_low with A < 0: clipped to 0.8, no gradient
        (0.5, 1.0, -0.5, -0.5, 0.0),  # below the range with A > 0: unclipped
        (1.25, 1.0, -1.25, -1.25, 0.0),  # clip-higher: 1.25 < 1.28 is not clipped (symmetric 0.2 would)
        (0.78, -1.0, 0.8, 0.0, 1.0),  # ... while the lower bound stays at 0.8
    ],
)
def test_ppo_clip_single_token(ratio, adv, loss, grad, clipped):
    got_loss, got_grad, stats = one_token(ratio, adv)
    assert got_loss == pytest.approx(loss, abs=1e-9)
    assert got_grad == pytest.approx(grad, abs=1e-9)
    assert stats["clip_frac"] == clipped
    assert stats["ratio_mean"] == pytest.approx(ratio) and stats["tokens"] == 1.0


def test_clip_higher_is_asymmetric():
    assert one_token(1.25, 1.0, clip_eps_high=0.2)[0] == pytest.approx(-1.2)
    assert one_token(1.25, 1.0, clip_eps_high=0.28)[0] == pytest.approx(-1.25)
    assert one_token(0.75, -1.0, clip_eps_low=0.2, clip_eps_high=0.28)[0] == pytest.approx(0.8)


def test_on_policy_default_has_ratio_one_and_gradient_minus_advantage():
    logp = torch.tensor([[-0.3, -2.0]], requires_grad=True)
    loss, stats = ppo_clip_loss(LossInputs(logp, torch.tensor([0.5]), torch.ones(1, 2)))
    loss.backward()
    assert loss.item() == pytest.approx(-0.5)
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -0.25])  # -A * 1 / N
    assert stats["ratio_max"] == 1.0 and stats["clip_frac"] == 0.0 and stats["is_weight_mean"] == 1.0
    logp.grad = None
    same, _ = ppo_clip_loss(LossInputs(logp, torch.tensor([0.5]), torch.ones(1, 2), old_logprobs=logp))
    same.backward()  # old_logprobs carrying a graph are detached: the gradient is unchanged, not zero
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -0.25])


# ---------------------------------------------------------------- truncated importance sampling


def test_tis_weight_capped_and_below_cap():
    logp = torch.zeros(1, 2, requires_grad=True)
    # exp(old - rollout) with old = logp = 0: 3.0 (capped at 2.0) and 1.5 (kept)
    rollout = torch.tensor([[math.log(1 / 3), math.log(2 / 3)]])
    batch = LossInputs(logp, torch.tensor([1.0]), torch.ones(1, 2), rollout_logprobs=rollout)
    loss, stats = ppo_clip_loss(batch, is_cap=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.0 + 1.5) / 2)
    assert logp.grad[0].tolist() == pytest.approx([-2.0 / 2, -1.5 / 2])  # -A * r * w / N
    assert stats["is_weight_max"] == pytest.approx(2.0)
    assert stats["is_weight_mean"] == pytest.approx(1.75)
    assert stats["is_capped_frac"] == 0.5
    assert stats["pg_loss"] == pytest.approx(-1.75)


def test_tis_weight_is_against_old_not_current_logprobs():
    logp = torch.tensor([[math.log(1.1)]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    rollout = torch.tensor([[math.log(0.4)]], dtype=torch.float64)
    batch = LossInputs(logp, torch.tensor([1.0]), torch.ones(1, 1), old_logprobs=old, rollout_logprobs=rollout)
    loss, stats = ppo_clip_loss(batch)
    # ratio = 1.1 / 0.5 = 2.2 -> clipped to 1.28; w = 0.5 / 0.4 = 1.25
    assert loss.item() == pytest.approx(-1.28 * 1.25)
    assert stats["is_weight_mean"] == pytest.approx(1.25) and stats["clip_frac"] == 1.0
    assert stats["ratio_max"] == pytest.approx(2.2) and stats["is_capped_frac"] == 0.0


# ---------------------------------------------------------------- KL (k3)


def test_k3_values():
    logp = torch.tensor([math.log(0.5), -1.3])
    ref = torch.tensor([math.log(0.25), -1.3])
    # d = ref - logp = log 0.5: exp(d) - d - 1 = 0.5 + 0.6931472 - 1
    assert k3(logp, ref).tolist() == pytest.approx([0.1931472, 0.0], abs=1e-6)


def test_kl_term_in_loss_and_its_gradient():
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]], dtype=torch.float64)
    batch = LossInputs(logp, torch.tensor([0.0]), torch.ones(1, 1), ref_logprobs=ref)
    loss, stats = ppo_clip_loss(batch, kl_coef=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(0.01931472, abs=1e-8)
    assert stats["kl"] == pytest.approx(0.1931472, abs=1e-6)
    assert logp.grad.item() == pytest.approx(0.1 * (1 - 0.5))  # kl_coef * (1 - exp(ref - logp))
    no_coef, no_coef_stats = ppo_clip_loss(batch, kl_coef=0.0)
    assert no_coef.item() == 0.0 and no_coef_stats["kl"] == pytest.approx(0.1931472, abs=1e-6)


# ---------------------------------------------------------------- aggregation


def two_sequences(logp: torch.Tensor | None = None) -> LossInputs:
    """Lengths 1 and 3 with advantages +1 and -1; on-policy, so each token's term is -A."""
    logp = torch.zeros(2, 3, requires_grad=True) if logp is None else logp
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    return LossInputs(logp, torch.tensor([1.0, -1.0]), mask)


def test_token_level_aggregation_weighs_tokens_not_sequences():
    loss, stats = ppo_clip_loss(two_sequences())
    assert loss.item() == pytest.approx((-1 + 3) / 4)  # token mean; the sequence mean would be (-1 + 1) / 2 = 0
    assert stats["tokens"] == 4.0


def test_token_normalizer_makes_micro_batches_sum_to_the_batch():
    logp = torch.zeros(2, 3, requires_grad=True)
    full, _ = ppo_clip_loss(two_sequences(logp))
    full.backward()
    full_grad = logp.grad.clone()
    logp.grad = None
    whole = two_sequences(logp)
    parts = []
    for i in range(2):
        micro = LossInputs(logp[i : i + 1], whole.advantages[i : i + 1], whole.mask[i : i + 1])
        loss, stats = ppo_clip_loss(micro, token_normalizer=4)
        parts.append(loss)
        assert stats["tokens"] == [1.0, 3.0][i]
    assert [p.item() for p in parts] == pytest.approx([-0.25, 0.75])
    sum(parts).backward()
    assert torch.allclose(logp.grad, full_grad)
    assert full.item() == pytest.approx(sum(p.item() for p in parts))
    with pytest.raises(ValueError, match="positive"):
        ppo_clip_loss(two_sequences(), token_normalizer=0)


def test_padding_may_hold_minus_inf_and_empty_mask_is_zero():
    logp = torch.tensor([[-0.5, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-0.5, float("-inf")]])
    batch = LossInputs(logp, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), old_logprobs=old,
                       rollout_logprobs=old, ref_logprobs=old, entropy=torch.tensor([[0.4, float("nan")]]))
    loss, stats = ppo_clip_loss(batch, kl_coef=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0) and logp.grad.tolist() == [[-1.0, 0.0]]
    assert stats["entropy"] == pytest.approx(0.4) and stats["kl"] == 0.0
    empty = LossInputs(torch.zeros(1, 2, requires_grad=True), torch.tensor([1.0]), torch.zeros(1, 2))
    loss, stats = ppo_clip_loss(empty)
    assert loss.item() == 0.0 and stats["tokens"] == 0.0 and stats["ratio_max"] == 0.0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="advantages"):
        LossInputs(torch.zeros(2, 3), torch.zeros(2, 1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="rollout_logprobs"):
        LossInputs(torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), rollout_logprobs=torch.zeros(2, 4))


# ---------------------------------------------------------------- gradients


def test_autograd_gradient_matches_hand_derived_formula():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 5
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    delta = (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5)  # ratios in [0.61, 1.65]
    rollout = old - (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.3) * 1.5  # some w above the cap
    adv = torch.tensor([1.3, -0.7, 0.4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    logp = (old + delta).requires_grad_(True)
    loss, stats = ppo_clip_loss(
        LossInputs(logp, adv, mask, old_logprobs=old, rollout_logprobs=rollout), is_cap=1.5
    )
    loss.backward()

    ratio = delta.exp()
    w = (old - rollout).exp().clamp(max=1.5)
    a = adv[:, None].expand(B, T)
    clipped = ((a > 0) & (ratio > 1.28)) | ((a < 0) & (ratio < 0.8))
    n = mask.sum()
    expected = torch.where(clipped | ~mask, torch.zeros_like(ratio), -a * ratio * w / n)
    assert clipped[mask].any() and (~clipped[mask]).any()  # both regions are exercised
    assert ((old - rollout).exp() > 1.5)[mask].any()
    assert torch.allclose(logp.grad, expected, atol=1e-12)
    assert stats["clip_frac"] == pytest.approx(clipped[mask].double().mean().item())


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(2, 4, generator=g, dtype=torch.float64) - 0.5
    rollout = old + 0.1 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    adv = torch.tensor([0.9, -1.1], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    # ratios 0.95, 1.1, 1.5 (clipped for A > 0), 0.7 (clipped for A < 0): well clear of the kinks
    delta = torch.log(torch.tensor([[0.95, 1.1, 1.5, 1.0], [0.95, 1.1, 1.5, 0.7]], dtype=torch.float64))
    logp = (old + delta).requires_grad_(True)

    def f(lp: torch.Tensor) -> torch.Tensor:
        batch = LossInputs(lp, adv, mask, old_logprobs=old, rollout_logprobs=rollout, ref_logprobs=ref)
        return ppo_clip_loss(batch, kl_coef=0.05)[0]

    assert torch.autograd.gradcheck(f, (logp,))


# ---------------------------------------------------------------- logprob helpers


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]], dtype=torch.bfloat16)
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert lp.dtype == torch.float32
    assert lp[0].tolist() == pytest.approx([math.log(0.75), math.log(0.5)], abs=1e-2)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, float("-inf"), float("-inf")]], requires_grad=True)
    both, ent = token_logprobs_and_entropy(logits, torch.tensor([3, 1]))
    assert ent.tolist() == pytest.approx([math.log(4), math.log(2)])
    assert both.tolist() == pytest.approx(token_logprobs(logits, torch.tensor([3, 1])).tolist())
    assert both.requires_grad and not ent.requires_grad


# ---------------------------------------------------------------- registries


def test_unknown_names_list_the_known_ones():
    with pytest.raises(TagPRError, match=r"unknown policy loss 'nope' \(known: .*ppo_clip"):
        LOSSES.get("nope")
    with pytest.raises(TagPRError, match=r"unknown advantage estimator 'rloo' \(known: .*grpo"):
        ADVANTAGES.get("rloo")
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'rloo' \(known: grpo"):
        RLConfig(advantage="rloo")  # a config naming it fails when it loads


def test_plug_in_estimator_and_loss_by_name(monkeypatch):
    from tagpr.config import KNOWN_NAMES

    for registry in (ADVANTAGES, LOSSES):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
        monkeypatch.setitem(KNOWN_NAMES, registry.kind, set(KNOWN_NAMES[registry.kind]))

    @ADVANTAGES.register("raw")
    def raw(rewards: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
        return rewards.clone()

    @LOSSES.register("neg_mean_logp")
    def neg_mean_logp(batch, cfg, *, token_normalizer=None):
        return -batch.logprobs[batch.mask.bool()].mean(), {"tokens": float(batch.mask.sum())}

    cfg = RLConfig(advantage="raw", loss="neg_mean_logp")
    assert compute_advantages(torch.tensor([[2.0, 5.0]]), cfg).tolist() == [[2.0, 5.0]]
    loss, stats = policy_loss(two_sequences(torch.full((2, 3), -2.0)), cfg)
    assert loss.item() == 2.0 and stats == {"tokens": 4.0}

    default, _ = policy_loss(two_sequences(), RLConfig())
    assert default.item() == pytest.approx(0.5)
