"""Dev-set evaluation of a policy: generate, parse the tagged response, score with LaMP's metrics.

Reports R_format (the response parses and its answer is in the answer space), the mean tag
score R_tag, each task's official metrics on the extracted answers, and ``task_score``, the mean
over tasks of one primary metric each (:func:`primary_score`). Generation is greedy
through the configured engine (``rollout.engine``: vLLM, or HF transformers where vLLM is absent).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tagpr.config import TagPRConfig
from tagpr.engines import Engine, Sampling, make_engine
from tagpr.lamp.io import Question, load_split
from tagpr.lamp.metrics import score_task
from tagpr.lamp.tasks import get_task
from tagpr.rewards import RewardInput, format_valid, judge, r_format
from tagpr.sft.data import prompt_text
from tagpr.tags import TagSet


def evaluate_policy(policy: str | Engine, cfg: TagPRConfig, split: str | None = None, limit: int = 0,
                    on_task: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Scores of ``policy`` (an HF folder, or an engine already holding it) on ``limit`` questions per
    task; ``on_task`` gets (tasks done, tasks) after each task."""
    engine = make_engine(cfg.rollout.engine, policy, cfg.model.dtype) if isinstance(policy, str) else policy
    try:
        return _evaluate(engine, cfg, split or cfg.data.dev_split, limit, on_task)
    finally:
        if engine is not policy:
            engine.close()


def respond(engine: Engine, cfg: TagPRConfig, task: str, questions: Sequence[Question]) -> list[str]:
    """The policy's greedy responses to ``questions`` of ``task``, prompted as in training."""
    tags = TagSet(cfg.tags)
    sampling = Sampling(temperature=0.0, max_tokens=cfg.rollout.max_tokens, stop=tuple(cfg.rollout.stop),
                        logprobs=False)
    prompts = [prompt_text(engine.tokenizer, tags, task, q.input, q.profile, cfg.data.prompt_profile_items)
               for q in questions]
    return [g.completions[0].text for g in engine.generate(prompts, sampling)]


def predict(policy: str, cfg: TagPRConfig, task: str, questions: Sequence[Question]) -> tuple[dict[str, str], float]:
    """LaMP predictions of ``policy`` (the answer section of each response; empty where the response
    has none) and the fraction of responses whose format is valid."""
    tags, t = TagSet(cfg.tags), get_task(task)
    engine = make_engine(cfg.rollout.engine, policy, cfg.model.dtype)
    try:
        responses = respond(engine, cfg, task, questions)
    finally:
        engine.close()
    checked = [tags.check(r, t.task_type) for r in responses]
    valid = [format_valid(c, t) for c in checked]
    return {q.id: c.answer or "" for q, c in zip(questions, checked)}, sum(valid) / max(len(valid), 1)


def _evaluate(engine: Engine, cfg: TagPRConfig, split: str, limit: int,
              on_task: Callable[[int, int], None] | None) -> dict[str, Any]:
    tags = TagSet(cfg.tags)
    per_task: dict[str, Any] = {}
    fmt, tag_scores = [], []
    for task in cfg.data.tasks:
        s = load_split(cfg.data.root, task, split, cfg.data.skip_invalid)
        questions = s.questions[: limit or None]
        responses = respond(engine, cfg, task, questions)
        judged = [judge(tags, RewardInput(task, r, s.golds[q.id], q.input, q.profile))
                  for q, r in zip(questions, responses)]
        f = [r_format(j) for j in judged]
        t = [j.checked.score for j in judged]
        fmt += f
        tag_scores += t
        preds = {q.id: (j.checked.answer or "") for q, j in zip(questions, judged)}
        per_task[task] = {"n": len(questions), "format": sum(f) / len(f), "tag": sum(t) / len(t),
                          **score_task(s.task, preds, {q.id: s.golds[q.id] for q in questions}),
                          "example": responses[0] if responses else ""}
        if on_task:
            on_task(len(per_task), len(cfg.data.tasks))
    return {"format_valid": sum(fmt) / len(fmt), "tag_score": sum(tag_scores) / len(tag_scores),
            "task_score": sum(primary_score(t) for t in per_task.values()) / len(per_task), "tasks": per_task}


def primary_score(scores: dict[str, float]) -> float:
    """One higher-is-better number in [0, 1] per task, so tasks average into a dev score: accuracy
    (LaMP-1/2), ``1 - MAE / 4`` (LaMP-3, ratings 1..5), ROUGE-1 (LaMP-4..7)."""
    if "accuracy" in scores:
        return scores["accuracy"]
    if "mae" in scores:
        return 1 - scores["mae"] / 4
    return scores["rouge-1"]
