"""Programmatic teacher, embedding labeler, filter, prompts and SFT tokenization (no Ray)."""

import json
from dataclasses import replace

import pytest

from tagpr.chains.filter import ChainFilter
from tagpr.chains.labelers import EmbeddingLabeler, LLMLabeler, lead, merge_runs, split_steps
from tagpr.chains.teachers import ChatReply, ChatTeacher, ProgrammaticTeacher, split_answer
from tagpr.config import ChainsConfig, SyntheticConfig
from tagpr.errors import TagPRError
from tagpr.lamp.io import load_split
from tagpr.lamp.metrics import sample_score
from tagpr.lamp.synthetic import generator, write_synthetic
from tagpr.lamp.tasks import get_task
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prompts import messages, user_message
from tagpr.sft.data import IGNORE, collate, collate_packed, tokenize_chains

ALL = [f"LaMP_{k}" for k in range(1, 8)]
MIN = ChainsConfig().min_score


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("lamp")
    write_synthetic(r, SyntheticConfig(seed=2, users={"train": 6, "dev": 2}, questions_per_user=2, profile_size=6), ALL)
    return r


def requests(root, task, split="train"):
    s = load_split(root, task, split)
    return s, s.questions


@pytest.mark.parametrize("task", ALL)
def test_programmatic_teacher_reasons_from_the_profile_items_the_prompt_shows(root, task):
    s, reqs = requests(root, task)
    reader = generator(task).profile_reader()
    for shown in (2, 6):
        outs = ProgrammaticTeacher(str(root), mistake_rate=0.0, max_items=shown).generate(reqs, 2)
        for q, out in zip(s.questions, outs):
            assert len(out.samples) == 2 and not out.errors
            reasoning, answer = split_answer(out.samples[0])
            assert answer == reader(replace(q, profile=q.profile[:shown]))  # what the visible items imply
            assert "<" not in reasoning and len(reasoning.splitlines()) >= 5  # plain, untagged prose
    for q, out in zip(s.questions, ProgrammaticTeacher(str(root), mistake_rate=0.0, max_items=2).generate(reqs, 1)):
        shown = {v for p in q.profile[:2] for v in p.values()}
        hidden = {v for p in q.profile[2:] for v in p.values() if isinstance(v, str) and len(v) > 20} - shown
        assert not any(f'"{v}"' in out.samples[0] for v in hidden)


def test_mistakes_and_unknown_users(root):
    s, reqs = requests(root, "LaMP_2")
    reader = generator("LaMP_2").profile_reader()
    outs = ProgrammaticTeacher(str(root), mistake_rate=1.0).generate(reqs, 1)
    assert all(split_answer(o.samples[0])[1] != reader(q) for q, o in zip(s.questions, outs))
    stranger = replace(reqs[0], id="x", user_id="nobody")
    out = ProgrammaticTeacher(str(root)).generate([stranger], 1)[0]
    assert out.samples == [] and out.errors["unknown user"] == 1


@pytest.mark.parametrize("task", ["LaMP_4", "LaMP_5", "LaMP_6", "LaMP_7"])
def test_the_filter_drops_answers_without_the_users_style(root, tagset, task):
    """The teacher's deliberate generation mistake is the generic output; the filter must not keep it."""
    s, reqs = requests(root, task)
    flt = ChainFilter(tagset, ChainsConfig().min_score)
    for q in s.questions:
        generic = generator(task).core(generator(task).source_of(q.input))
        assert sample_score(get_task(task), generic, q.gold) < flt.min_score["generation"]


def test_split_and_merge():
    assert split_answer("a\nb\nAnswer: [1]") == ("a\nb", "[1]")
    assert split_answer("no answer here")[1] is None
    assert split_steps("One step. Two steps! Three?") == ["One step.", "Two steps!", "Three?"]
    assert split_steps("line one. still one\nline two") == ["line one. still one", "line two"]
    assert merge_runs([("a", "x"), ("a", "y"), ("b", "z"), ("a", "w")]) == [("a", "x y"), ("b", "z"), ("a", "w")]
    assert lead("Looking through the profile, the items are: a, b") == "Looking through the profile"


def test_embedding_labeler_yields_valid_tagged_chains(root, tagset):
    labeler = EmbeddingLabeler(tagset, SentenceEncoder("minilm", 64))
    flt = ChainFilter(tagset, MIN)
    total = 0
    for task in ALL:
        s, reqs = requests(root, task)
        outs = ProgrammaticTeacher(str(root), mistake_rate=0.0).generate(reqs, 1)
        tagged = labeler.label([split_answer(o.samples[0]) for o in outs])
        flt.keep({"id": r.id, "task": task, "response": t, "gold": r.gold} for t, r in zip(tagged, reqs))
        total += len(reqs)
    assert not [why for why in flt.stats.dropped if why != "low score"], flt.stats  # every chain labels validly
    assert flt.stats.kept >= 0.8 * total, flt.stats


def test_filter_reasons(tagset):
    good = ("<examine_examples>a</examine_examples><identify_patterns>b</identify_patterns><infer_preference>c"
            "</infer_preference><compare_options>d</compare_options><answer>comedy</answer>")
    flt = ChainFilter(tagset, MIN)
    assert flt.reason("q1", "LaMP_2", good, "comedy") is None
    assert flt.reason("q1", "LaMP_2", good, "comedy") == "duplicate"
    assert flt.reason("q1", "LaMP_2", good.replace("comedy", "sci-fi"), "comedy") == "low score"
    assert flt.reason("q1", "LaMP_2", "<answer>comedy</answer>", "comedy") == "tag: required"
    assert flt.reason("q1", "LaMP_2", good.replace("comedy", "not a tag"), "comedy") == "unparsed"
    assert flt.reason("q1", "LaMP_2", good.replace("</answer>", ""), "comedy") == "unparsed"
    # the same text for another question is that question's example, not a duplicate
    assert flt.reason("q2", "LaMP_2", good, "comedy") is None


def test_prompt_and_sft_tokenization(root, tagset, tmp_path, cfg):
    from transformers import AutoTokenizer

    from tagpr.models import build_tiny_policy

    s, reqs = requests(root, "LaMP_2")
    text = user_message("LaMP_2", reqs[0].input, reqs[0].profile, 3)
    assert text.count("\n1. ") == 1 and "\n3. " in text and "\n4. " not in text and text.endswith(reqs[0].input)
    assert messages(tagset, "LaMP_2", "x", [], 0)[0]["role"] == "system"
    tok = AutoTokenizer.from_pretrained(build_tiny_policy(cfg.model, cfg.tags, tmp_path / "p"))
    chains = [{"task": "LaMP_2", "input": r.input, "profile": json.dumps(list(r.profile)),
               "response": "<summarize>x</summarize><answer>comedy</answer>"} for r in reqs[:3]]
    data = tokenize_chains(chains, tok, tagset, 8, 1024)
    assert len(data) == 3 and data.skipped_too_long == 0
    ids, labels = data.input_ids[0], data.labels[0]
    target = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(target) == "<summarize>x</summarize><answer>comedy</answer><|im_end|>"
    assert labels[: len(ids) - len(target)] == [IGNORE] * (len(ids) - len(target))
    assert tokenize_chains(chains, tok, tagset, 8, 20).skipped_too_long == 3
    batch = collate(data.input_ids[:2], data.labels[:2], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    packed = collate_packed(data.input_ids, data.labels, tok.pad_token_id, 4096)
    # rows no wider than the longest chain; these three are of a length, so each keeps a row of its own
    assert packed["input_ids"].shape == (3, max(len(x) for x in data.input_ids))
    lengths = sorted(map(len, data.input_ids), reverse=True)  # longest first, positions restart per example
    for row, n in enumerate(lengths):
        assert packed["position_ids"][row, :n].tolist() == list(range(n))


class ScriptedChatTeacher(ChatTeacher):
    """A fake chat model: a model that follows the labeling instructions cannot run in unit tests."""

    name = "scripted"

    def __init__(self, replies):
        self.replies, self.asked = list(replies), []

    def chat(self, conversations, n=1, max_tokens=None):
        self.asked += conversations
        return [ChatReply([self.replies.pop(0)]) for _ in conversations]


def test_llm_labeler_parses_tags_and_drops_bad_replies(tagset):
    reasoning = "Looking at the history, comedies.\nThe user likes comedy.\nThe film is a comedy."
    teacher = ScriptedChatTeacher([
        "1: examine_examples\n2: <identify_patterns>\n3. identify_patterns",  # runs merge
        "1: examine_examples\n3: compare_options",  # step 2 missing
        "1: examine_examples\n2: not_a_tag\n3: summarize",  # unknown tag
        "Sure! Here are the tags.",  # no labels at all
    ])
    labeler = LLMLabeler(tagset, teacher)
    out = labeler.label([(reasoning, "comedy")] * 4)
    assert out[0] == tagset.render([("examine_examples", "Looking at the history, comedies."),
                                    ("identify_patterns", "The user likes comedy. The film is a comedy.")], "comedy")
    assert out[1:] == [None, None, None]
    system, user = teacher.asked[0]
    assert all(t in system["content"] for t in tagset.primary)
    assert user["content"].endswith("3. The film is a comedy.")


def test_llm_labeler_needs_a_chat_teacher(tagset, root):
    with pytest.raises(TagPRError, match="chat teacher"):
        LLMLabeler(tagset, ProgrammaticTeacher(str(root)))


def test_chains_start_over_when_their_sources_change(cfg, tmp_path):
    from tagpr.jobs.chains import _restart_if_stale, source_fingerprint

    data = tmp_path / "lamp"
    write_synthetic(data, SyntheticConfig(seed=2, users={"train": 4, "dev": 2}, questions_per_user=2), ALL)
    c = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(data)})})
    first = source_fingerprint(c, "train")
    assert first == source_fingerprint(c, "train") and first != source_fingerprint(c, "dev")
    fewer_items = c.model_copy(update={"data": c.data.model_copy(update={"prompt_profile_items": 1})})
    assert source_fingerprint(fewer_items, "train") != first

    out, log = tmp_path / "chains", []
    out.mkdir()
    _restart_if_stale(out, "train", first, log.append)
    assert log == [] and (out / "train.source").read_text().strip() == first
    (out / "train.jsonl").write_text("{}\n")
    (out / "train.done").write_text("LaMP_1/1\n")
    _restart_if_stale(out, "train", first, log.append)  # same sources: resume
    assert (out / "train.done").exists() and log == []

    write_synthetic(data, SyntheticConfig(seed=3, users={"train": 4, "dev": 2}, questions_per_user=2), ALL)
    _restart_if_stale(out, "train", source_fingerprint(c, "train"), log.append)
    assert not (out / "train.jsonl").exists() and not (out / "train.done").exists() and "starting over" in log[0]

    (out / "dev.done").write_text("LaMP_1/1\n")  # written before fingerprints existed
    _restart_if_stale(out, "dev", source_fingerprint(c, "dev"), log.append)
    assert not (out / "dev.done").exists()
