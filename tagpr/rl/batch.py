"""From groups to the learner's tensors: stage rewards, advantages, and padded policy batches.

A batch keeps each distinct prompt once (left-padded) with the index of the prompt every response
continues, and the responses right-padded: :class:`tagpr.rl.forward.ResponseLM` runs the policy on
it either per sequence or with each prompt's key/value cache shared by its responses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tagpr.config import RLConfig
from tagpr.rewards import weighted
from tagpr.rl.forward import response_inputs
from tagpr.rl.trajectory import Group, PromptRef, Trajectory


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
    """Advantages for every sample of the step's groups, less those whose rewards are all equal where
    ``cfg.skip_uniform_groups`` (they carry no advantage, and would dilute the token normaliser);
    returns the rows and reward statistics over all groups."""
    from tagpr.algos import compute_advantages

    if not groups:
        return [], {"groups": 0, "groups_kept": 0}
    rewards = torch.tensor([[stage_reward(t, weights) for t in g.trajectories] for g in groups])
    adv = compute_advantages(rewards, cfg)
    varied = [informative(r) for r in rewards.tolist()]
    keep = varied if cfg.skip_uniform_groups else [True] * len(groups)
    rows = [Row(t, float(a)) for g, gadv, k in zip(groups, adv, keep) if k for t, a in zip(g.trajectories, gadv)]
    stats = {"groups": len(groups), "groups_kept": sum(keep), "reward_mean": float(rewards.mean()),
             "reward_std": float(rewards.std(correction=0)), "zero_variance_groups": len(varied) - sum(varied)}
    for name in sorted({k for g in groups for t in g.trajectories for k in t.components}):
        values = [t.components[name] for g in groups for t in g.trajectories if name in t.components]
        stats[f"reward/{name}"] = sum(values) / len(values)
    scored = [t.components for g in groups for t in g.trajectories if "prmu_raw" in t.components]
    if scored:  # every value, so the report can show R_PRMU's distribution (raw and calibrated)
        stats["prmu_scores"] = {"raw": [round(c["prmu_raw"], 4) for c in scored],
                                "calibrated": [round(c["prmu"], 4) for c in scored]}
    return rows, stats


def by_prompt(rows: Sequence[Row]) -> list[list[Row]]:
    """The rows grouped by prompt (a GRPO group each), in first-seen order."""
    groups: dict[PromptRef, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.traj.prompt, []).append(r)
    return list(groups.values())


def shard(rows: Sequence[Row], rank: int, world: int, micro_batches: int) -> list[list[Row]]:
    """This rank's rows in exactly ``micro_batches`` chunks, none empty; a prompt's rows stay in one
    chunk (groups dealt in turn to ranks, then to chunks), so they share its prefix.

    Every rank must run the same number of forward/backward passes (each one all-reduces), so a
    rank short of rows gets a zero-weight copy of a real row instead of an empty chunk.
    """
    if not rows:
        raise ValueError("no rows to shard")
    mine = by_prompt(rows)[rank::world]
    chunks = [[r for g in mine[i::micro_batches] for r in g] for i in range(micro_batches)]
    return [c or [Row(rows[0].traj, 0.0, 0.0)] for c in chunks]


def padded_positions(rows: Sequence[Row], shared_prefix: bool) -> int:
    """Positions a forward pass over ``rows`` holds once collated: each distinct prompt once at the
    longest prompt's length plus every response at the longest response's (shared prefix), or every
    row as the longest prompt followed by the longest response (per sequence)."""
    prompts = {tuple(r.traj.prompt_token_ids) for r in rows}
    longest_prompt = max(map(len, prompts))
    longest_response = max(1, max(len(r.traj.token_ids) for r in rows))
    if shared_prefix:
        return len(prompts) * longest_prompt + len(rows) * longest_response
    return len(rows) * (longest_prompt + longest_response)


def pack_by_positions(groups: Sequence[Sequence[Row]], max_positions: int, shared_prefix: bool) -> list[list[Row]]:
    """Consecutive chunks of the groups' rows, each within ``max_positions`` (:func:`padded_positions`):
    a group is split only where it does not fit whole, and a row over the budget alone is a chunk of
    its own."""
    chunks: list[list[Row]] = []
    current: list[Row] = []
    for row in (r for g in groups for r in g):
        if current and padded_positions([*current, row], shared_prefix) > max_positions:
            chunks.append(current)
            current = []
        current.append(row)
    return chunks + [current] if current else chunks


@dataclass(frozen=True)
class MicroBatching:
    """How a rank splits an update's rows into forward/backward passes: ``grad_accum`` chunks of
    whole groups, or, with ``max_tokens`` set, as many chunks as keep each within that many padded
    positions whatever the prompt lengths, so memory stays bounded. Every rank runs the same number
    of passes (each backward all-reduces): a rank with fewer chunks gets zero-weight fillers."""

    grad_accum: int = 1
    max_tokens: int = 0
    shared_prefix: bool = True

    def split(self, rows: Sequence[Row], rank: int, world: int) -> list[list[Row]]:
        if not self.max_tokens:
            return shard(rows, rank, world, self.grad_accum)
        if not rows:
            raise ValueError("no rows to shard")
        groups = by_prompt(rows)
        per_rank = [pack_by_positions(groups[r::world], self.max_tokens, self.shared_prefix) for r in range(world)]
        mine = per_rank[rank]
        return mine + [[Row(rows[0].traj, 0.0, 0.0)] for _ in range(max(map(len, per_rank)) - len(mine))]


@dataclass
class PolicyBatch:
    prompt_ids: Tensor  # (U, P): the distinct prompts, left-padded
    prompt_mask: Tensor  # (U, P)
    prompt_index: Tensor  # (B,): the prompt each response continues
    response_ids: Tensor  # (B, T), right-padded
    response_attention: Tensor  # (B, T), 1 on every response token
    response_mask: Tensor  # (B, T), the loss mask: 0 on padding and on zero-weight rows
    rollout_logprobs: Tensor  # (B, T)
    advantages: Tensor  # (B,)
    old_logprobs: Tensor | None = None  # (B, T), when the rows carry them
    ref_logprobs: Tensor | None = None  # (B, T)

    def to(self, device) -> PolicyBatch:
        return PolicyBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                              for f in fields(self)})

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments of :class:`tagpr.rl.forward.ResponseLM`."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask, "prompt_index": self.prompt_index,
                "response_ids": self.response_ids, "response_attention": self.response_attention}


def collate(rows: Sequence[Row], pad_id: int) -> PolicyBatch:
    for r in rows:  # TIS needs the sampler's logprob of every token
        if len(r.traj.logprobs) != len(r.traj.token_ids):
            raise ValueError(f"{r.traj.prompt.key}: {len(r.traj.logprobs)} rollout logprobs for "
                             f"{len(r.traj.token_ids)} tokens")
    inputs = response_inputs([r.traj.prompt_token_ids for r in rows], [r.traj.token_ids for r in rows], pad_id)
    t = inputs["response_ids"].shape[1]
    rmask = torch.tensor([[float(r.weight > 0)] * len(r.traj.token_ids) + [0.0] * (t - len(r.traj.token_ids))
                          for r in rows])
    rlp = torch.tensor([list(r.traj.logprobs) + [0.0] * (t - len(r.traj.logprobs)) for r in rows])
    return PolicyBatch(**inputs, response_mask=rmask, rollout_logprobs=rlp,
                       advantages=torch.tensor([r.advantage for r in rows]),
                       old_logprobs=_per_token(rows, "old_logprobs", t),
                       ref_logprobs=_per_token(rows, "ref_logprobs", t))


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
