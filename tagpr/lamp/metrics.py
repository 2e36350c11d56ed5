"""LaMP's official metrics, and the per-sample task reward built on them.

Rules (docs/method.md section 7, as LaMP's evaluation script applies them): predictions are matched to
golds by id and stripped. LaMP-1/2: accuracy and macro-F1 over label indices, a prediction
outside the label list maps to -1 (wrong, and a false positive for no class). LaMP-3: MAE and
RMSE on ratings read through float32; an unparseable prediction becomes 1 or 5, whichever is
farther from the gold. LaMP-4..7: ROUGE-1 and ROUGE-L F-measure without stemming, averaged over
samples (LaMP's script reports the bootstrap "mid" of the same per-sample scores; the plain mean is
the deterministic equivalent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

import numpy as np
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

from tagpr.errors import TagPRError
from tagpr.lamp.tasks import LampTask


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


def label_index(labels: tuple[str, ...], text: str) -> int:
    try:
        return labels.index(text.strip())
    except ValueError:
        return -1


def _number(text: str) -> float | None:
    """``text`` as LaMP-3's evaluator reads a rating: ``float()``, then float32 (its metric's feature
    type, so ``1e39`` is infinite); None where ``float()`` fails."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def rating_value(pred: str, gold: float) -> float:
    """LaMP-3's mapping: the rating if it parses, else the worst of 1 and 5 for this gold. A number
    that is not finite in float32 (nan, inf, 1e39) makes LaMP's evaluator fail; scored here as
    unparseable (file scoring refuses it: :func:`score_task` with ``strict``)."""
    value = _number(pred)
    if value is not None and math.isfinite(value):
        return value
    return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0


def gold_rating(gold: str) -> float:
    """A LaMP-3 gold as a number; ``ValueError`` naming the value where LaMP's evaluator fails on it."""
    value = _number(gold)
    if value is None or not math.isfinite(value):
        raise ValueError(f"LaMP_3 gold {gold!r} is not a finite number")
    return value


def rouge(pred: str, gold: str) -> tuple[float, float]:
    """(ROUGE-1 F, ROUGE-L F) of one prediction."""
    scores = _scorer().score(gold.strip(), pred.strip())
    return scores["rouge1"].fmeasure, scores["rougeL"].fmeasure


def classification_scores(labels: tuple[str, ...], preds: list[str], golds: list[str]) -> dict[str, float]:
    p = [label_index(labels, x) for x in preds]
    g = [label_index(labels, x) for x in golds]
    accuracy = float(np.mean([a == b for a, b in zip(p, g)]))
    f1 = f1_score(g, p, labels=list(range(len(labels))), average="macro", zero_division=0)
    return {"accuracy": accuracy, "f1": float(f1)}


def rating_scores(preds: list[str], golds: list[float]) -> dict[str, float]:
    """MAE and RMSE of ``preds`` against golds already read as numbers (:func:`gold_rating`)."""
    g = np.array(golds)
    p = np.array([rating_value(x, y) for x, y in zip(preds, g)])
    err = p - g
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}


def generation_scores(preds: list[str], golds: list[str]) -> dict[str, float]:
    pairs = np.array([rouge(p, g) for p, g in zip(preds, golds)])
    return {"rouge-1": float(pairs[:, 0].mean()), "rouge-L": float(pairs[:, 1].mean())}


def score_task(task: LampTask, predictions: Mapping[str, str], golds: Mapping[str, str],
               strict: bool = False) -> dict[str, float]:
    """Official scores of ``predictions`` (id -> text) against ``golds`` (id -> text). As LaMP's
    evaluator, the two must hold the same ids, and a LaMP-3 gold must be a number. ``strict`` (a
    predictions file) also refuses a LaMP-3 prediction that is a number but not finite in float32,
    where LaMP's evaluator fails; otherwise (a policy's answers) it scores as unparseable."""
    if not golds:
        raise TagPRError(f"{task.name}: no golds to score against")
    missing = [i for i in golds if i not in predictions]
    if missing:
        raise TagPRError(f"{task.name}: {len(missing)} gold id(s) have no prediction, e.g. {missing[:5]}")
    extra = [i for i in predictions if i not in golds]
    if extra:
        raise TagPRError(f"{task.name}: {len(extra)} prediction id(s) are not in the golds, e.g. {extra[:5]} "
                         "(LaMP's evaluator needs the same ids in both)")
    ids = list(golds)
    preds = [predictions[i] for i in ids]
    refs = [golds[i] for i in ids]
    if task.task_type == "classification":
        assert task.labels is not None
        return classification_scores(task.labels, preds, refs)
    if task.task_type == "rating":
        values = []
        for i in ids:
            try:
                values.append(gold_rating(golds[i]))
            except ValueError as exc:
                raise TagPRError(f"{task.name}: id {i}: {exc}") from None
            value = _number(predictions[i])
            if strict and value is not None and not math.isfinite(value):
                raise TagPRError(f"{task.name}: id {i}: prediction {predictions[i]!r} is a number that is not "
                                 "finite in float32, which LaMP's evaluator fails on")
        return rating_scores(preds, values)
    return generation_scores(preds, refs)


OFFICIAL_NAMES = {"mae": "MAE", "rmse": "RMSE"}  # LaMP-3's keys in LaMP's evaluator; the others are the same


def official_names(scores: Mapping[str, float]) -> dict[str, float]:
    """The scores whose key LaMP's evaluator spells otherwise, under its spelling."""
    return {OFFICIAL_NAMES[k]: v for k, v in scores.items() if k in OFFICIAL_NAMES}


GenerationMetric = Literal["rougeL", "mean_rouge1_rougeL"]


def sample_score(task: LampTask, pred: str | None, gold: str, generation_metric: GenerationMetric = "rougeL") -> float:
    """R_task in [0, 1] for one prediction (docs/method.md section 3)."""
    if pred is None:
        return 0.0
    if task.task_type == "classification":
        return float(pred.strip() == gold.strip())
    if task.task_type == "rating":
        g = gold_rating(gold)
        return max(0.0, 1.0 - abs(rating_value(pred, g) - g) / 4.0)
    r1, rl = rouge(pred, gold)
    return rl if generation_metric == "rougeL" else (r1 + rl) / 2
