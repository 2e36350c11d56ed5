"""The TagPR composite reward (TAGPR.md section 3).

    R = alpha * (R_format * R_task) + beta * R_tag + gamma * R_PRMU

Each term is a registered class; a stage's ``weights`` (``{"format_task": 1, "tag": 0.2,
"prmu": 0.3}``) name the terms it uses, so a new term plugs in by registering a class and
naming it in the config. Every term returns its components (``format``, ``task``, ``prmu_raw``,
...) so they can be logged next to the total.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from tagpr.config import RewardConfig, TagPRConfig
from tagpr.errors import TagPRError
from tagpr.lamp.metrics import sample_score
from tagpr.lamp.tasks import LampTask, get_task
from tagpr.registry import Registry
from tagpr.tags import Checked, TagSet


@dataclass(frozen=True)
class RewardInput:
    """One response to score, with what the reward needs to know about its prompt."""

    task: str
    response: str
    gold: str
    input: str = ""
    profile: tuple[Mapping[str, Any], ...] = ()
    user_id: str | None = None


@dataclass(frozen=True)
class Judged:
    """A response with its task and its parse, computed once and shared by all terms."""

    item: RewardInput
    task: LampTask
    checked: Checked


@dataclass
class RewardResult:
    reward: float
    components: dict[str, float] = field(default_factory=dict)


class PersonalizationScorer(Protocol):
    """What the ``prmu`` term calls: raw PRMU scores (any real number) for a batch."""

    def score(self, batch: Sequence[Judged]) -> list[float]: ...


@dataclass
class RewardContext:
    tags: TagSet
    cfg: RewardConfig
    prmu: PersonalizationScorer | None = None


class RewardTerm(ABC):
    name: ClassVar[str]

    def __init__(self, ctx: RewardContext):
        self.ctx = ctx

    @abstractmethod
    def score(self, batch: Sequence[Judged]) -> list[dict[str, float]]:
        """Per sample: ``{self.name: value, other components...}``."""


REWARD_TERMS: Registry[type[RewardTerm]] = Registry("reward term")


def judge(tags: TagSet, item: RewardInput) -> Judged:
    """Parse and check a response once; every term reads the result."""
    task = get_task(item.task)
    return Judged(item, task, tags.check(item.response, task.task_type))


def format_valid(checked: Checked, task: LampTask) -> bool:
    """The response parses and its answer lies in the task's answer space."""
    return checked.parses and task.in_answer_space(checked.answer)


def r_format(j: Judged) -> float:
    return float(format_valid(j.checked, j.task))


@REWARD_TERMS.register("format_task")
class FormatTask(RewardTerm):
    """R_format * R_task: the task metric counts only for a well-formed answer."""

    name = "format_task"

    def score(self, batch):
        out = []
        for j in batch:
            fmt = r_format(j)
            task = sample_score(j.task, j.checked.answer, j.item.gold, self.ctx.cfg.generation_metric)
            out.append({self.name: fmt * task, "format": fmt, "task": task})
        return out


@REWARD_TERMS.register("tag")
class TagConstraints(RewardTerm):
    """R_tag: the fraction of tag constraints satisfied."""

    name = "tag"

    def score(self, batch):
        return [{self.name: j.checked.score} for j in batch]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@REWARD_TERMS.register("prmu")
class PRMUTerm(RewardTerm):
    """R_PRMU: the PRMU score through a sigmoid, optionally z-scored within the batch (group)."""

    name = "prmu"

    def __init__(self, ctx: RewardContext):
        super().__init__(ctx)
        if ctx.prmu is None:
            raise TagPRError("reward term 'prmu' has a weight but no PRMU scorer is configured")

    def score(self, batch):
        raw = [float(x) for x in self.ctx.prmu.score(batch)]
        if len(raw) != len(batch):
            raise RuntimeError(f"PRMU scorer returned {len(raw)} scores for {len(batch)} samples")
        values = raw
        if self.ctx.cfg.prmu_transform == "group_sigmoid" and len(raw) > 1:
            mean = sum(raw) / len(raw)
            std = math.sqrt(sum((x - mean) ** 2 for x in raw) / len(raw))
            values = [(x - mean) / (std + 1e-6) for x in raw]
        return [{self.name: _sigmoid(v), "prmu_raw": r} for v, r in zip(values, raw)]


class FixedScores:
    """A ``PersonalizationScorer`` that returns scores computed elsewhere (e.g. by a remote PRMU)."""

    def __init__(self, scores: Sequence[float]):
        self.scores = list(scores)

    def score(self, batch: Sequence[Judged]) -> list[float]:
        if len(batch) != len(self.scores):
            raise RuntimeError(f"{len(self.scores)} precomputed PRMU scores for {len(batch)} samples")
        return self.scores


class CompositeReward:
    """The weighted sum of registered terms, scored per batch (a GRPO group is one batch)."""

    def __init__(self, weights: Mapping[str, float], ctx: RewardContext):
        self.weights = dict(weights)
        self.ctx = ctx
        self.terms = [REWARD_TERMS.get(name)(ctx) for name in self.weights]

    @classmethod
    def for_stage(cls, cfg: TagPRConfig, stage: str, prmu: PersonalizationScorer | None = None) -> CompositeReward:
        stages = {s.name: s for s in cfg.rl.stages}
        if stage not in stages:
            raise TagPRError(f"unknown RL stage {stage!r} (configured: {', '.join(stages)})")
        return cls(stages[stage].weights, RewardContext(TagSet(cfg.tags), cfg.reward, prmu))

    def judge(self, item: RewardInput) -> Judged:
        return judge(self.ctx.tags, item)

    def score(self, items: Sequence[RewardInput]) -> list[RewardResult]:
        return self.score_judged([self.judge(i) for i in items])

    def score_judged(self, batch: Sequence[Judged]) -> list[RewardResult]:
        results = [RewardResult(0.0) for _ in batch]
        for term in self.terms:
            weight = self.weights[term.name]
            for res, comps in zip(results, term.score(batch)):
                res.reward += weight * comps[term.name]
                res.components.update(comps)
        return results
