"""The learner's math without Ray: rows and advantages from groups, padded batches, one GRPO step."""

from __future__ import annotations

import math

import pytest
import torch

from tagpr.config import RLConfig
from tagpr.rl.batch import (
    MicroBatching,
    Row,
    collate,
    informative,
    pack_by_positions,
    padded_positions,
    rows_from_groups,
    shard,
    stage_reward,
)
from tagpr.rl.forward import ResponseLM, probe_shared_prefix, response_lm
from tagpr.rl.learn import LOSS_STATS, mini_batches, train_step
from tagpr.rl.plateau import Plateau
from tagpr.rl.trajectory import Group, PromptRef, Trajectory


def traj(prompt, tokens, logprobs=None, reward=0.0, components=None, key="p", version=0):
    return Trajectory(PromptRef(0, key), list(prompt), list(tokens),
                      list(logprobs) if logprobs is not None else [-1.0] * len(tokens), "",
                      components if components is not None else {"format_task": reward}, version, "w")


def group(rewards, key="p", components=None):
    return Group(PromptRef(0, key), [traj([1, 2], [3], reward=r, key=key,
                                          components=components[i] if components else None)
                                     for i, r in enumerate(rewards)], 0, "w")


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


class SGD:
    """The stepper protocol over a plain module, keeping the last step's gradients."""

    device = torch.device("cpu")

    def __init__(self, module, lr=0.0, shared_prefix=False):
        self.module, self.opt = module, torch.optim.SGD(module.parameters(), lr=lr)
        self.scorer = ResponseLM(module, shared_prefix)
        self.grads = None

    def forward(self, **batch):
        return self.scorer(**batch)

    def backward(self, loss, last=True):
        loss.backward()

    def optimizer_step(self):
        self.grads = {n: p.grad.clone() for n, p in self.module.named_parameters() if p.grad is not None}
        self.opt.step()
        self.opt.zero_grad()


def logprobs_alone(model, prompt, tokens, temperature=1.0):
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_stage_reward_reweighs_components_and_names_missing_ones():
    t = traj([1], [2], components={"format_task": 1.0, "tag": 0.5, "prmu": 0.25})
    assert stage_reward(t, {"format_task": 1.0, "tag": 0.2, "prmu": 0.3}) == pytest.approx(1.175)
    assert stage_reward(t, {"format_task": 1.0}) == 1.0
    with pytest.raises(KeyError, match="prmu"):
        stage_reward(traj([1], [2], components={"format_task": 1.0}), {"format_task": 1.0, "prmu": 0.3})


def test_rows_carry_group_advantages_and_leave_out_constant_groups():
    groups = [group([1.0, 0.0], "a"), group([0.5, 0.5], "b")]
    rows, stats = rows_from_groups(groups, {"format_task": 1.0}, RLConfig(std_eps=1e-6))
    assert [round(r.advantage, 4) for r in rows] == [1.0, -1.0]  # the constant group adds no tokens
    assert stats["reward_mean"] == pytest.approx(0.5) and stats["zero_variance_groups"] == 1
    assert stats["groups_kept"] == 1
    assert informative([0.2, 0.2 + 1e-3]) and not informative([0.5, 0.5 + 1e-9])


def test_constant_groups_are_trained_on_when_asked_with_zero_advantage():
    groups = [group([1.0, 0.0], "a"), group([0.5, 0.5], "b")]
    rows, stats = rows_from_groups(groups, {"format_task": 1.0}, RLConfig(std_eps=1e-6, skip_uniform_groups=False))
    assert [round(r.advantage, 4) for r in rows] == [1.0, -1.0, 0.0, 0.0]
    assert stats["groups_kept"] == 2 and stats["zero_variance_groups"] == 1


def test_step_stats_keep_every_prmu_score_the_stage_received():
    scored = {"format_task": 1.0, "prmu": 0.7, "prmu_raw": 1.5}
    gated = {"format_task": 0.0, "prmu": 0.0}  # malformed: the PRMU was not asked
    _, stats = rows_from_groups([group([1.0, 0.0], components=[scored, gated])], {"format_task": 1.0}, RLConfig())
    assert stats["prmu_scores"] == {"raw": [1.5], "calibrated": [0.7]}
    _, stats = rows_from_groups([group([1.0, 0.0])], {"format_task": 1.0}, RLConfig())
    assert "prmu_scores" not in stats


def test_shard_gives_every_rank_the_same_number_of_nonempty_chunks():
    rows = [Row(traj([1], [2], key=str(i)), 1.0) for i in range(3)]
    chunks = [shard(rows, rank, 2, 2) for rank in range(2)]
    assert all(len(c) == 2 and all(c) for c in chunks)
    real = [r.traj.prompt.id for c in chunks for part in c for r in part if r.weight > 0]
    assert sorted(real) == ["0", "1", "2"]  # each row once; the filler carries weight 0
    assert sum(r.weight == 0 for c in chunks for part in c for r in part) == 1


def test_padded_positions_count_a_shared_prompt_once():
    rows = [Row(traj([1, 2, 3], [4, 5], key="a"), 1.0), Row(traj([1, 2, 3], [6], key="a"), 1.0),
            Row(traj([7], [8, 9, 10], key="b"), 1.0)]
    assert padded_positions(rows, shared_prefix=True) == 2 * 3 + 3 * 3  # two prompts, three responses
    assert padded_positions(rows, shared_prefix=False) == 3 * (3 + 3)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_token_micro_batches_keep_within_the_budget_and_ranks_in_step(shared_prefix):
    groups = [[Row(traj([1] * plen, [2] * (1 + i), key=f"g{g}"), 1.0) for i in range(4)]
              for g, plen in enumerate([30, 3, 12, 5, 40])]
    rows = [r for g in groups for r in g]
    budget = 60
    micro = MicroBatching(max_tokens=budget, shared_prefix=shared_prefix)
    per_rank = [micro.split(rows, rank, 2) for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 2  # the same number of passes on every rank
    real = [r for chunks in per_rank for c in chunks for r in c if r.weight > 0]
    assert sorted(map(id, real)) == sorted(map(id, rows))  # every row once
    for chunks in per_rank:
        for c in chunks:
            assert len(c) == 1 or padded_positions(c, shared_prefix) <= budget
    # alone, a group that fits stays in one chunk; one row over the budget is a chunk of its own
    assert pack_by_positions([groups[1]], budget, shared_prefix) == [groups[1]]
    assert pack_by_positions([groups[4][:1]], 10, shared_prefix) == [groups[4][:1]]


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_padded_batch_scores_each_response_as_the_model_does_alone(model, shared_prefix):
    rows = [Row(traj([5, 6, 7], [8, 9]), 1.0), Row(traj([5], [8, 9, 10]), -1.0), Row(traj([5, 6, 7], [4]), 0.5),
            Row(traj([5], [11, 12]), 0.5)]
    b = collate(rows, pad_id=0)
    assert b.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 5]] and b.prompt_index.tolist() == [0, 1, 0, 1]
    assert b.response_ids.tolist() == [[8, 9, 0], [8, 9, 10], [4, 0, 0], [11, 12, 0]]
    assert b.response_mask.tolist()[:2] == [[1, 1, 0], [1, 1, 1]]
    with torch.no_grad():
        logits = ResponseLM(model, shared_prefix)(**b.model_inputs())
    assert logits.shape[:2] == (4, 3)  # logits only at the response positions
    lp = torch.log_softmax(logits, -1).gather(-1, b.response_ids[..., None])[..., 0]
    for i, r in enumerate(rows):
        n = len(r.traj.token_ids)
        torch.testing.assert_close(lp[i, :n], logprobs_alone(model, r.traj.prompt_token_ids, r.traj.token_ids),
                                   atol=1e-5, rtol=1e-5)


def test_shared_prefix_runs_the_model_twice_only_where_a_prompt_is_shared(model):
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        for rows, passes in (([Row(traj([5, 6], [8, 9]), 1.0), Row(traj([5, 6], [4]), 0.5)], 2),
                             ([Row(traj([5, 6], [8, 9]), 1.0), Row(traj([7], [4]), 0.5)], 1)):
            calls.clear()
            with torch.no_grad():
                ResponseLM(model, True)(**collate(rows, pad_id=0).model_inputs())
            assert len(calls) == passes
    finally:
        hook.remove()


def test_collate_refuses_trajectories_without_every_rollout_logprob():
    with pytest.raises(ValueError, match="rollout logprobs"):
        collate([Row(traj([1], [2, 3], logprobs=[-1.0]), 1.0)], 0)


def on_policy_rows(model, specs):
    """Rows whose rollout logprobs are the model's own (no IS correction)."""
    return [Row(traj(p, t, logprobs_alone(model, p, t).tolist(), key=str(i)), a) for i, (p, t, a) in enumerate(specs)]


SPECS = [([1, 2, 3], [4, 5], 1.0), ([1, 2], [6, 7, 8], -1.0), ([3], [9], 0.5), ([2, 2, 2, 2], [10, 11], -0.5)]


def test_a_step_raises_the_logprob_of_positive_samples_and_lowers_negative_ones(model):
    import copy

    m = copy.deepcopy(model)
    rows = on_policy_rows(m, SPECS[:2])
    before = [logprobs_alone(m, r.traj.prompt_token_ids, r.traj.token_ids).sum() for r in rows]
    sums = train_step(SGD(m, lr=0.5), rows, RLConfig(), MicroBatching(), pad_id=0)
    after = [logprobs_alone(m, r.traj.prompt_token_ids, r.traj.token_ids).sum() for r in rows]
    assert after[0] > before[0] and after[1] < before[1]
    assert sums[-1] == 5  # tokens
    stats = dict(zip(LOSS_STATS, (sums[:-1] / sums[-1]).tolist()))
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_frac"] == 0.0
    assert stats["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)


GROUPED = SPECS + [([1, 2, 3], [7], -1.0), ([1, 2, 3], [4, 6, 9], 0.5), ([2, 2, 2, 2], [5], 1.0)]


def test_shared_prefix_gives_the_per_sequence_loss_and_gradients(model):
    """Groups sharing prompts, mixed prompt and response lengths; GRPO with clip, TIS and KL active."""
    import copy

    rows = on_policy_rows(model, GROUPED)
    for r in rows:  # off-policy sampler logprobs (TIS) and a reference that is not the policy (KL)
        r.traj.logprobs = [x - 0.3 for x in r.traj.logprobs]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))

    class Recorder(SGD):
        def __init__(self, module, lr, shared_prefix):
            super().__init__(module, lr, shared_prefix)
            self.updates = []

        def optimizer_step(self):
            super().optimizer_step()
            self.updates.append(self.grads)

    runs = {}
    for shared in (False, True):
        stepper = Recorder(copy.deepcopy(model), 1.0, shared)
        sums = train_step(stepper, [Row(r.traj, r.advantage) for r in rows], RLConfig(kl_coef=0.1, mini_batches=2),
                          MicroBatching(), pad_id=0, reference=ResponseLM(reference, shared))
        runs[shared] = (stepper.updates, sums)
    (per_seq, sums_a), (shared, sums_b) = runs[False], runs[True]
    stats = dict(zip(LOSS_STATS, (sums_a[:-1] / sums_a[-1]).tolist()))
    assert len(per_seq) == 2 and stats["clip_frac"] > 0 and stats["kl"] > 0 and stats["is_weight_mean"] != 1.0
    torch.testing.assert_close(sums_b, sums_a, atol=1e-6, rtol=1e-5)
    for a, b in zip(per_seq, shared):  # fp32, relative 1e-5 on each parameter's gradient
        for name, g in a.items():
            assert (b[name] - g).norm() <= 1e-5 * g.norm(), name


def test_the_probe_turns_shared_prefix_on_where_the_model_agrees(model):
    ok, why = probe_shared_prefix(model)
    assert ok, why
    assert response_lm(model, "auto").shared_prefix and not response_lm(model, "off").shared_prefix

    class NoCache(torch.nn.Module):  # a model that cannot take a cache: the probe says so
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def get_input_embeddings(self):
            return self.lm.get_input_embeddings()

        def forward(self, past_key_values=None, **kw):
            if past_key_values is not None:
                raise TypeError("no cache here")
            return self.lm(**kw)

    ok, why = probe_shared_prefix(NoCache(model))
    assert not ok and "no cache here" in why
    assert not response_lm(NoCache(model), "auto").shared_prefix


def test_the_gradient_does_not_depend_on_micro_batches_or_ranks(model):
    rows = on_policy_rows(model, SPECS)
    whole = SGD(model)
    train_step(whole, rows, RLConfig(), MicroBatching(), pad_id=0)
    accum = SGD(model)
    train_step(accum, rows, RLConfig(), MicroBatching(grad_accum=3), pad_id=0)
    by_tokens = SGD(model)  # as many micro-batches as keep each within 8 padded positions
    train_step(by_tokens, rows, RLConfig(), MicroBatching(max_tokens=8, shared_prefix=False), pad_id=0)
    ranks = [SGD(model) for _ in range(2)]
    for rank, s in enumerate(ranks):
        train_step(s, rows, RLConfig(), MicroBatching(grad_accum=2), pad_id=0, rank=rank, world=2)
    token_ranks = [SGD(model) for _ in range(2)]  # one chunk on rank 0 (and a filler), two on rank 1
    for rank, s in enumerate(token_ranks):
        train_step(s, rows, RLConfig(), MicroBatching(max_tokens=10), pad_id=0, rank=rank, world=2)
    for name, g in whole.grads.items():
        torch.testing.assert_close(accum.grads[name], g, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(by_tokens.grads[name], g, atol=1e-6, rtol=1e-4)
        for pair in (ranks, token_ranks):  # what DDP's all-reduce does
            torch.testing.assert_close((pair[0].grads[name] + pair[1].grads[name]) / 2, g, atol=1e-6, rtol=1e-4)


def test_the_first_mini_batch_update_is_the_one_update_gradient_and_the_clip_acts_after_it(model):
    import copy

    rows = on_policy_rows(model, SPECS)
    minis = mini_batches(rows, 2)
    one = SGD(copy.deepcopy(model))
    train_step(one, minis[0], RLConfig(), MicroBatching(), pad_id=0)

    class Recorder(SGD):
        def __init__(self, module, lr):
            super().__init__(module, lr)
            self.updates = []

        def optimizer_step(self):
            super().optimizer_step()
            self.updates.append(self.grads)

    several = Recorder(copy.deepcopy(model), lr=2.0)
    sums = train_step(several, [Row(r.traj, r.advantage) for r in rows], RLConfig(mini_batches=2, ppo_epochs=2),
                      MicroBatching(grad_accum=2), pad_id=0)
    assert len(several.updates) == 4  # 2 epochs x 2 mini-batches
    for name, g in one.grads.items():
        torch.testing.assert_close(several.updates[0][name], g, atol=1e-6, rtol=1e-4)
    stats = dict(zip(LOSS_STATS, (sums[:-1] / sums[-1]).tolist()))
    assert stats["clip_frac"] > 0  # later updates move the ratio away from 1 and hit the clip
    assert stats["ratio_mean"] != pytest.approx(1.0, abs=1e-4)


def test_old_logprobs_are_the_policy_before_the_step(model):
    import copy

    m = copy.deepcopy(model)
    rows = [Row(r.traj, r.advantage) for r in on_policy_rows(m, SPECS)]
    train_step(SGD(m, lr=1.0), rows, RLConfig(mini_batches=2), MicroBatching(), pad_id=0)
    for r in rows:  # computed before the first update, so equal to the sampler's logprobs here
        torch.testing.assert_close(r.old_logprobs, torch.tensor(r.traj.logprobs), atol=1e-5, rtol=1e-5)


def test_the_learner_scores_at_the_rollout_temperature(model):
    """Samples drawn at temperature 0.5 carry the engine's logprobs at 0.5; scored at the same
    temperature they are on-policy (importance weight 1), scored at 1.0 they would not be."""
    rows = [Row(traj(p, t, logprobs_alone(model, p, t, 0.5).tolist(), key=str(i)), a)
            for i, (p, t, a) in enumerate(SPECS)]

    def weight(temperature):
        sums = train_step(SGD(model), rows, RLConfig(), MicroBatching(), pad_id=0, temperature=temperature)
        return dict(zip(LOSS_STATS, (sums[:-1] / sums[-1]).tolist()))["is_weight_mean"]

    assert weight(0.5) == pytest.approx(1.0, abs=1e-5)
    assert weight(1.0) != pytest.approx(1.0, abs=1e-4)


def test_k3_is_clamped():
    from tagpr.algos import k3

    huge = k3(torch.tensor([-60.0]), torch.tensor([0.0]))
    assert torch.isfinite(huge).all() and float(huge) == pytest.approx(math.exp(10) - 11)


def test_plateau_stops_after_patience_steps_without_improvement():
    p = Plateau(patience=2, delta=0.1)
    assert [p.update(r) for r in (0.5, 0.55, 0.7, 0.65, 0.75)] == [False, False, False, False, True]
    assert not any(Plateau(0, 0.1).update(0.0) for _ in range(5))
    resumed = Plateau(2, 0.1, **p.state())
    assert resumed.best == 0.7 and resumed.since == 2


def test_rollout_time_split_per_worker_second():
    from actors.controller import rollout_fractions

    before = {"gen_s": 1.0, "reward_s": 0.0, "sync_s": 0.0, "blocked_s": 0.0, "tokens": 100, "groups": 1}
    after = {"gen_s": 13.0, "reward_s": 2.0, "sync_s": 1.0, "blocked_s": 4.0, "tokens": 1100, "groups": 5}
    out = rollout_fractions(before, after, seconds=10.0, workers=2)
    assert out["gen_frac"] == pytest.approx(0.6) and out["blocked_frac"] == pytest.approx(0.2)
    assert out["reward_frac"] == pytest.approx(0.1) and out["sync_frac"] == pytest.approx(0.05)
    assert out["tokens_per_s"] == 100 and out["groups_per_s"] == 0.4
    replaced = rollout_fractions(after, {**after, "gen_s": 3.0}, seconds=10.0, workers=2)
    assert replaced["gen_frac"] == 0.0  # a replaced worker's counters restart from zero
    straddling = rollout_fractions(before, {**before, "blocked_s": 25.0}, seconds=10.0, workers=2)
    assert straddling["blocked_frac"] == 1.0


def test_a_batch_moves_whole_to_the_stepper_device():
    from dataclasses import fields

    from actors.train_strategy import to_device

    b = collate([Row(traj([1, 2], [3, 4]), 1.0), Row(traj([5], [6]), -1.0)], 0)
    moved = b.to(torch.device("meta"))
    for f in fields(b):
        value = getattr(b, f.name)
        assert value is None or (getattr(moved, f.name).device.type == "meta"
                                 and getattr(moved, f.name).shape == value.shape), f.name
    inputs = to_device({**b.model_inputs(), "return_dict": True}, torch.device("meta"))
    assert inputs["prompt_ids"].device.type == "meta" and inputs["return_dict"] is True

def _random_lm(arch, **shape):
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, f"{arch}ForCausalLM")(getattr(transformers, f"{arch}Config")(**shape))


def _lora(lm):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                         task_type="CAUSAL_LM", init_lora_weights=False))


TINY_QWEN2 = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                    tie_word_embeddings=True)


def _same_gradients_both_ways(lm, vocab):
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    prompts = [ids(9), ids(5), ids(12)]
    rows = [Row(traj(prompts[i % 3], ids(n), [-2.0] * n, key=str(i)), a)
            for i, (n, a) in enumerate([(4, 1.0), (2, -1.0), (6, 0.5), (1, -0.5), (5, 1.0), (3, -1.0)])]
    grads = []
    for shared in (False, True):
        stepper = SGD(lm, shared_prefix=shared)
        train_step(stepper, rows, RLConfig(), MicroBatching(), pad_id=0)
        grads.append(stepper.grads)
    assert grads[0], "no trainable gradients"
    for name, want in grads[0].items():
        assert (grads[1][name] - want).norm() <= 1e-5 * want.norm(), name


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_prefix_gradients_on_the_policy_architecture(lora):
    lm = _random_lm("Qwen2", **TINY_QWEN2)
    _same_gradients_both_ways(_lora(lm) if lora else lm, TINY_QWEN2["vocab_size"])


@pytest.mark.slow
def test_shared_prefix_gradients_at_smollm2_135m_shape():
    _same_gradients_both_ways(_random_lm("Llama", **SMOLLM2_135M), SMOLLM2_135M["vocab_size"])
