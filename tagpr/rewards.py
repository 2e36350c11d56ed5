"""The TagPR composite reward (docs/method.md section 3).

    R = alpha * (R_format * R_task) + beta * R_tag + gamma * R_PRMU

Each term is a registered class that computes *components* (``format``, ``task``, ``format_task``,
``tag``, ``prmu``, ``prmu_raw``); a stage's ``weights`` (``{"format_task": 1, "tag": 0.2, "prmu": 0.3}``)
name the terms it uses, and :func:`weighted` is the one place they are summed: the learner applies it
to each trajectory's components with the current stage's weights, the reward service for clients that
need one scalar. A response that is not format-valid earns 0 on every term (the gate), so malformed
text never out-earns a well-formed wrong answer; R_tag and R_PRMU are graded, not 0/1.
"""

from __future__ import annotations

import functools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from tagpr.config import RewardConfig, TagPRConfig
from tagpr.errors import TagPRError
from tagpr.lamp.io import Prompt
from tagpr.lamp.metrics import sample_score
from tagpr.lamp.tasks import LampTask, get_task
from tagpr.registry import Registry
from tagpr.tags import Checked, TagSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardInput:
    """A response to score and the prompt it answers."""

    prompt: Prompt
    response: str


@dataclass(frozen=True)
class Judged:
    """A response with its task and its parse, computed once and shared by all terms."""

    item: RewardInput
    task: LampTask
    checked: Checked


@dataclass
class RewardResult:
    """A response's reward under a stage's weights, with the components it was summed from;
    ``defaulted`` when a reward client's failure policy filled it in instead of a scorer."""

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    defaulted: bool = False


class PersonalizationScorer(Protocol):
    """What the ``prmu`` term calls: raw PRMU scores (any real number) for a batch, and the mean and
    std of the raw score over the PRMU's training examples (None when the checkpoint has none)."""

    def score(self, batch: Sequence[Judged]) -> list[float]: ...

    @property
    def score_stats(self) -> tuple[float, float] | None: ...


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
    task = get_task(item.prompt.task)
    return Judged(item, task, tags.check(item.response, task.task_type))


def format_valid(checked: Checked, task: LampTask) -> bool:
    """The response parses and its answer lies in the task's answer space."""
    return checked.parses and task.in_answer_space(checked.answer)


def r_format(j: Judged) -> float:
    return float(format_valid(j.checked, j.task))


def weighted(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The composite reward: the stage's weights applied to a response's components.

    The one place terms are summed. A component the weights need and the response lacks is an
    error (a group scored for another stage must carry every term this stage weighs).
    """
    missing = [k for k, w in weights.items() if w and k not in components]
    if missing:
        raise KeyError(f"reward components {missing} missing (have {sorted(components)})")
    return sum(w * components[k] for k, w in weights.items() if w)


@REWARD_TERMS.register("format_task")
class FormatTask(RewardTerm):
    """R_format * R_task: the task metric counts only for a well-formed answer."""

    name = "format_task"

    def score(self, batch):
        out = []
        for j in batch:
            if j.item.prompt.gold is None:
                raise TagPRError(f"reward term 'format_task' needs a gold answer; prompt {j.item.prompt.key} has none")
            fmt = r_format(j)
            task = sample_score(j.task, j.checked.answer, j.item.prompt.gold, self.ctx.cfg.generation_metric)
            out.append({self.name: fmt * task, "format": fmt, "task": task})
        return out


@REWARD_TERMS.register("tag")
class TagConstraints(RewardTerm):
    """R_tag: the graded tag score (:attr:`tagpr.tags.Checked.score`), 0 behind the format gate."""

    name = "tag"

    def score(self, batch):
        return [{self.name: j.checked.score * r_format(j)} for j in batch]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def calibrate(raw: Sequence[float], transform: str, stats: tuple[float, float] | None) -> list[float]:
    """Raw PRMU scores to [0, 1]: ``sigmoid(z)``, with ``z`` the raw score standardised by the PRMU's
    training-set statistics (``calibrated``: one item alone gets a graded value) or within the batch
    (``group``: a GRPO group's samples ranked against each other; a lone sample gets 0.5). A
    checkpoint without statistics (saved before they existed, or never trained) is standardised
    within the batch, with a warning.

    Raw scores reach +-20, so a plain sigmoid would saturate to 0/1 and grade nothing.
    """
    if transform == "calibrated" and stats is not None:
        mean, std = stats
    else:
        if transform == "calibrated":
            _warn_once("the PRMU checkpoint has no score statistics: R_PRMU is standardised within each group "
                       "(retrain the PRMU to calibrate it on its training pairs)")
        mean = sum(raw) / len(raw) if raw else 0.0
        std = math.sqrt(sum((x - mean) ** 2 for x in raw) / len(raw)) if raw else 0.0
    return [_sigmoid((x - mean) / std) if std > 0 else 0.5 for x in raw]


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def gated(batch: Sequence[Judged]) -> list[Judged]:
    """The responses behind the format gate, in order: the only ones the PRMU is asked to score."""
    return [j for j in batch if r_format(j)]


@REWARD_TERMS.register("prmu")
class PRMUTerm(RewardTerm):
    """R_PRMU: the calibrated PRMU score of a format-valid response (0 behind the gate), with the
    raw score beside it as ``prmu_raw`` for the report's distribution."""

    name = "prmu"

    def __init__(self, ctx: RewardContext):
        super().__init__(ctx)
        if ctx.prmu is None:
            raise TagPRError("reward term 'prmu' has a weight but no PRMU scorer is configured")

    def score(self, batch):
        passed = [bool(r_format(j)) for j in batch]
        valid = [j for j, ok in zip(batch, passed) if ok]
        raw = [float(x) for x in self.ctx.prmu.score(valid)] if valid else []
        if len(raw) != len(valid):
            raise RuntimeError(f"PRMU scorer returned {len(raw)} scores for {len(valid)} samples")
        scored = iter(zip(calibrate(raw, self.ctx.cfg.prmu_transform, self.ctx.prmu.score_stats), raw))
        return [dict(zip((self.name, "prmu_raw"), next(scored))) if ok else {self.name: 0.0} for ok in passed]


class FixedScores:
    """A ``PersonalizationScorer`` that returns raw scores computed elsewhere (a remote PRMU) for the
    gated responses of a batch, with that PRMU's statistics."""

    def __init__(self, scores: Sequence[float], stats: tuple[float, float] | None = None):
        self.scores, self.stats = list(scores), stats

    @property
    def score_stats(self) -> tuple[float, float] | None:
        return self.stats

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
        components: list[dict[str, float]] = [{} for _ in batch]
        for term in self.terms:
            for comps, new in zip(components, term.score(batch)):
                comps.update(new)
        return [RewardResult(weighted(c, self.weights), c) for c in components]
