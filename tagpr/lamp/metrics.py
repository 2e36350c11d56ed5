"""LaMP's official metrics, and the per-sample task reward built on them.

Rules (docs/method.md section 7, as LaMP's evaluation script applies them): predictions are matched to
golds by id and stripped. LaMP-1/2: accuracy and macro-F1 over label indices, a prediction
outside the label list maps to -1 (wrong, and a false positive for no class). LaMP-3: MAE and
RMSE; an unparseable prediction becomes 1 or 5, whichever is farther from the gold. LaMP-4..7:
ROUGE-1 and ROUGE-L F-measure without stemming, averaged over samples (LaMP's script reports the
bootstrap "mid" of the same per-sample scores; the plain mean is the deterministic equivalent).
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


def rating_value(pred: str, gold: float) -> float:
    """LaMP-3's mapping: a float if it parses, else the worst of 1 and 5 for this gold."""
    try:
        value = float(pred.strip())
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0


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


def rating_scores(preds: list[str], golds: list[str]) -> dict[str, float]:
    g = np.array([float(x) for x in golds])
    p = np.array([rating_value(x, y) for x, y in zip(preds, g)])
    err = p - g
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}


def generation_scores(preds: list[str], golds: list[str]) -> dict[str, float]:
    pairs = np.array([rouge(p, g) for p, g in zip(preds, golds)])
    return {"rouge-1": float(pairs[:, 0].mean()), "rouge-L": float(pairs[:, 1].mean())}


def score_task(task: LampTask, predictions: Mapping[str, str], golds: Mapping[str, str]) -> dict[str, float]:
    """Official scores of ``predictions`` (id -> text) against ``golds`` (id -> text)."""
    if not golds:
        raise TagPRError(f"{task.name}: no golds to score against")
    missing = [i for i in golds if i not in predictions]
    if missing:
        raise TagPRError(f"{task.name}: {len(missing)} gold id(s) have no prediction, e.g. {missing[:5]}")
    ids = list(golds)
    preds = [predictions[i] for i in ids]
    refs = [golds[i] for i in ids]
    if task.task_type == "classification":
        assert task.labels is not None
        return classification_scores(task.labels, preds, refs)
    if task.task_type == "rating":
        return rating_scores(preds, refs)
    return generation_scores(preds, refs)


GenerationMetric = Literal["rougeL", "mean_rouge1_rougeL"]


def sample_score(task: LampTask, pred: str | None, gold: str, generation_metric: GenerationMetric = "rougeL") -> float:
    """R_task in [0, 1] for one prediction (docs/method.md section 3)."""
    if pred is None:
        return 0.0
    if task.task_type == "classification":
        return float(pred.strip() == gold.strip())
    if task.task_type == "rating":
        g = float(gold)
        return max(0.0, 1.0 - abs(rating_value(pred, g) - g) / 4.0)
    r1, rl = rouge(pred, gold)
    return rl if generation_metric == "rougeL" else (r1 + rl) / 2
