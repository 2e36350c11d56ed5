"""From groups to the learner's tensors: stage rewards, advantages, and padded policy batches.

Prompts are left-padded and responses right-padded, so every response starts at the same column
and the logits that scored it are the last ``T + 1`` positions but one, for the whole batch: the
model is asked for those positions only (``logits_to_keep``), so the LM head and the log-softmax
never run over the profile-heavy prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tagpr.config import RLConfig
from tagpr.rewards import weighted
from tagpr.rl.trajectory import Group, Trajectory


def stage_reward(traj: Trajectory, weights: Mapping[str, float]) -> float:
    """The composite reward under ``weights`` from the trajectory's components.

    A group scored under another stage (generated before the learner moved on) is re-weighed
    rather than dropped; it needs every term the stage weights.
    """
    try:
        return weighted(traj.components, weights)
    except KeyError as exc:
        raise KeyError(f"trajectory of {traj.prompt.key}: {exc.args[0]}") from None


@dataclass
class Row:
    """One response to train on; ``weight`` 0 marks padding that keeps ranks in step. The learner
    fills ``old_logprobs`` and ``ref_logprobs`` (one per response token) before its updates."""

    traj: Trajectory
    advantage: float
    weight: float = 1.0
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None


def informative(rewards: Sequence[float], atol: float = 1e-6) -> bool:
    """Whether a group's rewards differ: a group whose samples all score the same has zero
    advantages under GRPO, so it adds no gradient, only tokens to the normaliser."""
    return max(rewards) - min(rewards) > atol


def rows_from_groups(groups: Sequence[Group], weights: Mapping[str, float], cfg: RLConfig) -> tuple[list[Row], dict]:
    """Advantages for every sample of the step's informative groups (zero-variance groups carry no
    advantage and are left out, so they do not dilute the token normaliser); returns the rows and
    reward statistics over all groups."""
    from tagpr.algos import compute_advantages

    if not groups:
        return [], {"groups": 0, "groups_kept": 0}
    rewards = torch.tensor([[stage_reward(t, weights) for t in g.trajectories] for g in groups])
    adv = compute_advantages(rewards, cfg)
    keep = [informative(r) for r in rewards.tolist()]
    rows = [Row(t, float(a)) for g, gadv, k in zip(groups, adv, keep) if k for t, a in zip(g.trajectories, gadv)]
    stats = {"groups": len(groups), "groups_kept": sum(keep), "reward_mean": float(rewards.mean()),
             "reward_std": float(rewards.std(correction=0)), "zero_variance_groups": len(keep) - sum(keep)}
    for name in sorted({k for g in groups for t in g.trajectories for k in t.components}):
        values = [t.components[name] for g in groups for t in g.trajectories if name in t.components]
        stats[f"reward/{name}"] = sum(values) / len(values)
    scored = [t.components for g in groups for t in g.trajectories if "prmu_raw" in t.components]
    if scored:  # every value, so the report can show R_PRMU's distribution (raw and calibrated)
        stats["prmu_scores"] = {"raw": [round(c["prmu_raw"], 4) for c in scored],
                                "calibrated": [round(c["prmu"], 4) for c in scored]}
    return rows, stats


def shard(rows: Sequence[Row], rank: int, world: int, micro_batches: int) -> list[list[Row]]:
    """This rank's rows in exactly ``micro_batches`` chunks, none empty.

    Every rank must run the same number of forward/backward passes (each one all-reduces), so a
    rank short of rows gets a zero-weight copy of a real row instead of an empty chunk.
    """
    if not rows:
        raise ValueError("no rows to shard")
    mine = list(rows[rank::world])
    chunks = [mine[i::micro_batches] for i in range(micro_batches)]
    return [c or [Row(rows[0].traj, 0.0, 0.0)] for c in chunks]


@dataclass
class PolicyBatch:
    input_ids: Tensor  # (B, P + T)
    attention_mask: Tensor  # (B, P + T)
    position_ids: Tensor  # (B, P + T)
    response_ids: Tensor  # (B, T)
    response_mask: Tensor  # (B, T), 0 on padding and on zero-weight rows
    rollout_logprobs: Tensor  # (B, T)
    advantages: Tensor  # (B,)
    prompt_width: int  # P
    old_logprobs: Tensor | None = None  # (B, T), when the rows carry them
    ref_logprobs: Tensor | None = None  # (B, T)

    def to(self, device) -> PolicyBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PolicyBatch(*(move(t) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                               self.response_ids, self.response_mask, self.rollout_logprobs,
                                               self.advantages)), self.prompt_width,
                           move(self.old_logprobs), move(self.ref_logprobs))

    def model_inputs(self) -> dict[str, Tensor | int]:
        """Keyword arguments for an HF causal LM: logits only from position ``P - 1`` on."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids,
                "logits_to_keep": self.response_ids.shape[1] + 1}

    def response_logits(self, logits: Tensor) -> Tensor:
        """The logits that predicted each response token, ``(B, T, V)``, from the model's output on
        :meth:`model_inputs` (whose last position predicts past the response)."""
        return logits[:, :self.response_ids.shape[1]]


def collate(rows: Sequence[Row], pad_id: int) -> PolicyBatch:
    p = max(len(r.traj.prompt_token_ids) for r in rows)
    t = max(1, max(len(r.traj.token_ids) for r in rows))
    ids, attn, resp, rmask, rlp = [], [], [], [], []
    for r in rows:
        prompt, out = r.traj.prompt_token_ids, r.traj.token_ids
        if len(r.traj.logprobs) != len(out):  # TIS needs the sampler's logprob of every token
            raise ValueError(f"{r.traj.prompt.key}: {len(r.traj.logprobs)} rollout logprobs for {len(out)} tokens")
        lpad, rpad = p - len(prompt), t - len(out)
        ids.append([pad_id] * lpad + prompt + out + [pad_id] * rpad)
        attn.append([0] * lpad + [1] * (len(prompt) + len(out)) + [0] * rpad)
        resp.append(out + [pad_id] * rpad)
        rmask.append([float(r.weight > 0)] * len(out) + [0.0] * rpad)
        rlp.append(list(r.traj.logprobs) + [0.0] * rpad)
    attention = torch.tensor(attn)
    return PolicyBatch(torch.tensor(ids), attention, (attention.cumsum(-1) - 1).clamp(min=0), torch.tensor(resp),
                       torch.tensor(rmask), torch.tensor(rlp), torch.tensor([r.advantage for r in rows]), p,
                       _per_token(rows, "old_logprobs", t), _per_token(rows, "ref_logprobs", t))


def _per_token(rows: Sequence[Row], name: str, width: int) -> Tensor | None:
    """The rows' ``name`` logprobs as (B, width), or None when no row has them. A zero-weight filler
    row has none; its zeros are masked out of the loss."""
    if all(getattr(r, name) is None or r.weight == 0 for r in rows):
        return None
    out = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        values = getattr(r, name)
        if values is None:
            if r.weight > 0:
                raise ValueError(f"{r.traj.prompt.key}: no {name} on a row that is trained on")
            continue
        out[i, :len(values)] = values
    return out
