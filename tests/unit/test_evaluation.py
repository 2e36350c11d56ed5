"""Dev evaluation without an inference engine: questions drawn across users, per-question scores on
the primary scale, and the sampled format-validity pass (a scripted engine stands in for vLLM)."""

from collections import Counter

import pytest

from tagpr.config import SyntheticConfig, load_config
from tagpr.engines import Engine, Sampling
from tagpr.engines.base import Completion, Generation
from tagpr.evaluation import (
    eval_sampling,
    evaluate_policy,
    most_common_answer,
    primary_score,
    question_ids,
    question_scores,
    select_questions,
)
from tagpr.lamp.io import Prompt, load_split
from tagpr.lamp.metrics import score_task
from tagpr.lamp.synthetic import write_synthetic
from tagpr.lamp.tasks import get_task


def questions(users, per_user):
    return [Prompt(f"u{u}q{k}", "LaMP_2", "x", (), user_id=f"u{u}") for u in range(users) for k in range(per_user)]


def test_a_limit_spreads_over_every_user_deterministically():
    qs = questions(64, 4)
    chosen = select_questions(qs, 96, seed=0)
    per_user = Counter(q.user_id for q in chosen)
    assert len(chosen) == 96 and len(per_user) == 64 and set(per_user.values()) == {1, 2}
    assert [q.id for q in chosen] == [q.id for q in select_questions(qs, 96, seed=0)]
    assert [q.id for q in chosen] != [q.id for q in select_questions(qs, 96, seed=1)]
    order = [qs.index(q) for q in chosen]
    assert order == sorted(order)  # file order, whatever the draw
    assert [q.id for q in chosen] != [q.id for q in qs[:96]]


def test_fewer_questions_than_users_take_one_each_from_distinct_users():
    chosen = select_questions(questions(64, 4), 32, seed=0)
    assert len({q.user_id for q in chosen}) == 32


def test_no_limit_or_a_limit_past_the_end_is_every_question():
    qs = questions(3, 2)
    assert select_questions(qs, 0, seed=0) == qs and select_questions(qs, 10, seed=5) == qs


def test_questions_without_a_user_are_a_seeded_sample():
    qs = [Prompt(f"q{i}", "LaMP_2", "x", ()) for i in range(20)]
    chosen = select_questions(qs, 5, seed=0)
    assert len({q.id for q in chosen}) == 5 and chosen != qs[:5]


@pytest.mark.parametrize("task, preds, golds", [
    ("LaMP_2", ["comedy", "sci-fi", "not a tag", " action "], ["comedy", "comedy", "action", "action"]),
    ("LaMP_3", ["3", "five", "1", "9"], ["4", "2", "1", "5"]),  # "five" is unparseable: the far end, 5
    ("LaMP_4", ["a short title", "", "another title here"], ["a short title", "some title", "title here"]),
])
def test_per_question_scores_average_to_the_primary_score(task, preds, golds):
    t = get_task(task)
    p = {f"q{i}": x for i, x in enumerate(preds)}
    g = {f"q{i}": x for i, x in enumerate(golds)}
    per_q = question_scores(t, p, g)
    assert list(per_q) == list(g)
    assert sum(per_q.values()) / len(per_q) == pytest.approx(primary_score(score_task(t, p, g)))
    if task == "LaMP_3":
        assert per_q == pytest.approx({"q0": 0.75, "q1": 0.25, "q2": 1.0, "q3": 0.0})


class Tokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "\n".join(m["content"] for m in messages)


class ScriptedEngine(Engine):
    """Greedy: a fixed, well-formed answer per task; sampled: text without tags (format-invalid)."""

    name = "scripted"

    def __init__(self):
        self.tokenizer, self.samplings = Tokenizer(), []

    def generate(self, prompts, sampling: Sampling):
        self.samplings.append(sampling)
        answer = "3" if "score" in prompts[0] else "comedy"
        text = f"<answer>{answer}</answer>" if sampling.temperature == 0 else answer
        return [Generation([], [Completion(text, [], None, "stop")]) for _ in prompts]


@pytest.fixture()
def cfg(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path}", "data.tasks=[LaMP_2, LaMP_3]", "rollout.temperature=0.7",
                             "rollout.top_p=0.9", "run.seed=3"])
    write_synthetic(tmp_path, cfg.data.synthetic, cfg.data.tasks)
    return cfg


def test_the_default_dev_split_has_at_least_256_questions_per_task(cfg):
    assert cfg.data.synthetic == SyntheticConfig()
    assert {t: len(ids) for t, ids in question_ids(cfg, 0).items()} == {"LaMP_2": 256, "LaMP_3": 256}


def test_evaluation_records_ids_per_question_scores_and_sampled_validity(cfg):
    engine = ScriptedEngine()
    result = evaluate_policy(engine, cfg, limit=32)
    ids = question_ids(cfg, 32)
    for task, entry in result["tasks"].items():
        split = load_split(cfg.data.root, task, "dev")
        users = {q.id: q.user_id for q in split.questions}
        assert entry["n"] == 32 and list(entry["per_question"]) == ids[task]
        assert len({users[i] for i in ids[task]}) == 32  # one question from each of 32 of the 64 users
        assert sum(entry["per_question"].values()) / 32 == pytest.approx(primary_score(entry))
        assert (entry["format"], entry["sampled_format"]) == (1.0, 0.0)
        assert entry["top_answer_share"] == 1.0  # the scripted engine answers every question alike
    assert (result["tasks"]["LaMP_2"]["top_answer"], result["tasks"]["LaMP_3"]["top_answer"]) == ("comedy", "3")
    lamp3 = result["tasks"]["LaMP_3"]["per_question"]
    golds = load_split(cfg.data.root, "LaMP_3", "dev").golds
    assert lamp3 == pytest.approx({i: 1 - abs(3 - float(golds[i])) / 4 for i in lamp3})
    assert (result["format_valid"], result["sampled_format_valid"]) == (1.0, 0.0)
    assert result["selection"] == {"limit": 32, "seed": 3}
    assert result["sampling"] == {"temperature": 0.7, "top_p": 0.9}
    greedy, sampled = engine.samplings[0], engine.samplings[1]
    assert greedy.temperature == 0 and (sampled.temperature, sampled.top_p, sampled.seed) == (0.7, 0.9, None)
    assert len(engine.samplings) == 4  # greedy and sampled, two tasks


def test_the_most_common_answer_and_its_share():
    assert most_common_answer(["[1]", "[2]", " [1] ", "[1]"]) == {"top_answer": "[1]", "top_answer_share": 0.75}
    assert most_common_answer([]) == {}


def test_the_sampled_pass_is_optional(cfg):
    engine = ScriptedEngine()
    result = evaluate_policy(engine, cfg, limit=8, sampled=False)
    assert "sampled_format_valid" not in result and "sampled_format" not in result["tasks"]["LaMP_2"]
    assert all(s.temperature == 0 for s in engine.samplings) and len(engine.samplings) == 2


def test_eval_sampling_follows_the_rollout_settings(cfg):
    assert eval_sampling(cfg, False).temperature == 0.0
    s = eval_sampling(cfg, True)
    assert (s.temperature, s.top_p, s.n, s.max_tokens) == (0.7, 0.9, 1, cfg.rollout.max_tokens)
