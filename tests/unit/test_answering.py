"""What serving the policy needs without Ray: users' profiles and responses split for the client."""

from __future__ import annotations

import json

import pytest

from tagpr.answering import Answer, AnswerStream, ProfileStore, UserProfile
from tagpr.errors import DataError, TagPRError
from tagpr.lamp.io import load_split

REASONING = ("<examine_examples>Past films are sci-fi.</examine_examples><identify_patterns>sci-fi recurs"
             "</identify_patterns><infer_preference>Likes sci-fi.</infer_preference><compare_options>sci-fi over "
             "romance</compare_options>")


def test_a_tagged_response_gives_reasoning_and_answer_apart(tagset):
    a = Answer.of(REASONING + "\n<answer>sci-fi</answer>", tagset, "LaMP_2")
    assert a.content == "sci-fi" and a.reasoning == REASONING and a.format_valid
    assert [t for t, _ in a.sections] == ["examine_examples", "identify_patterns", "infer_preference",
                                          "compare_options"]


@pytest.mark.parametrize("text, content, valid", [
    ("no tags at all", "", False),  # evaluation's prediction for it is empty too
    ("<answer>sci-fi</answer>", "sci-fi", True),  # sections missing cost the tag reward, not the format
    ("<answer>sci-fi</answer> and some words", "sci-fi", False),  # text outside the sections
    (REASONING + "<answer>not a LaMP-2 tag</answer>", "not a LaMP-2 tag", False),  # off the label space
])
def test_an_answer_is_what_evaluation_reads_and_validity_follows_the_task(tagset, text, content, valid):
    a = Answer.of(text, tagset, "LaMP_2")
    assert (a.content, a.format_valid) == (content, valid)
    assert a.reasoning == (text if content == "" else text[: text.rfind("<answer>")]).strip()


def test_profiles_are_read_from_lamp_files_by_user_and_by_question(fixtures_dir, tmp_path):
    store = ProfileStore.from_lamp(fixtures_dir)
    q = load_split(fixtures_dir, "LaMP_2", "dev").questions[0]
    user = store.get(q.user_id or q.id)
    assert user is not None and user.task == "LaMP_2" and len(user.profile) >= len(q.profile)
    assert store.get("nobody") is None
    (tmp_path / "LaMP_3").mkdir()
    (tmp_path / "LaMP_3" / "dev_questions.json").write_text(json.dumps([
        {"id": "q1", "input": "review: fine", "profile": [{"text": "ok", "score": "4"}]},
        {"id": "q2", "input": "review: good", "user_id": "u7", "profile": [{"text": "ok", "score": "4"}]},
        {"id": "q3", "input": "review: bad", "user_id": "u7",
         "profile": [{"text": "ok", "score": "4"}, {"text": "meh", "score": "2"}]},
    ]))
    own = ProfileStore.from_lamp(tmp_path, tasks=["LaMP_3"])
    assert len(own) == 2 and own.get("q1").task == "LaMP_3" and len(own.get("u7").profile) == 2  # the longer one


def test_a_folder_without_lamp_files_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        ProfileStore.from_lamp(tmp_path)


def test_sent_profiles_are_kept_within_capacity_and_never_evict_the_files_users():
    store = ProfileStore({"file-user": UserProfile("LaMP_2", ())}, capacity=2)
    for u in ("a", "b", "c"):
        store.put(u, "LaMP_2", [{"description": u, "tag": "sci-fi"}])
    assert store.get("a") is None and store.get("b") and store.get("c") and store.get("file-user")
    store.get("b")  # used: "c" is now the oldest
    store.put("d", "LaMP_2", [])
    assert store.get("c") is None and store.get("b") is not None and len(store) == 3
    with pytest.raises(TagPRError):
        store.put("e", "LaMP_9", [])


def test_sent_profiles_replayed_into_a_new_store_keep_their_eviction_order():
    """What a new ingress replica does with the profiles another one was sent."""
    old = ProfileStore(capacity=3)
    for u in ("a", "b", "c"):
        old.put(u, "LaMP_2", [{"description": u, "tag": "sci-fi"}])
    old.get("a")  # used: "b" is now the oldest
    new = ProfileStore({"file-user": UserProfile("LaMP_2", ())}, capacity=3)
    for user, p in old.sent_profiles():
        new.put(user, p.task, p.profile)
    assert [u for u, _ in new.sent_profiles()] == ["b", "c", "a"] and new.get("a") == old.get("a")
    new.put("d", "LaMP_3", [])
    assert new.get("b") is None and new.get("c") and new.get("file-user")


RESPONSES = [
    "<examine_examples>Past films are sci-fi.</examine_examples>\n<answer> sci-fi </answer>",
    "<answer>comedy</answer>",
    "  <identify_preference>likes <an odd> films</identify_preference> <answer>dark comedy</answer>\n",
]


@pytest.mark.parametrize("text", RESPONSES)
def test_a_stream_split_anywhere_gives_what_the_whole_response_gives(tagset, text):
    """Every way of cutting the response into two or three pieces: the joined deltas are the
    reasoning and the answer :meth:`Answer.of` reads from the whole text."""
    whole = Answer.of(text, tagset, "LaMP_2")
    cuts = [(i, j) for i in range(len(text) + 1) for j in range(i, len(text) + 1)]
    for i, j in cuts:
        stream = AnswerStream(tagset)
        deltas = [d for part in (text[:i], text[i:j], text[j:]) for d in stream.feed(part)] + stream.close()
        assert "".join(d.get("reasoning_content", "") for d in deltas) == whole.reasoning, (i, j)
        assert "".join(d.get("content", "") for d in deltas) == whole.content, (i, j)
        assert all(len(d) == 1 and next(iter(d.values())) for d in deltas)


def test_a_stream_sends_reasoning_before_the_response_ends(tagset):
    stream = AnswerStream(tagset)
    assert stream.feed("<examine_examples>Past films") == [{"reasoning_content": "<examine_examples>Past films"}]
    assert stream.feed(" are sci-fi.</examine_examples> <ans") == [
        {"reasoning_content": " are sci-fi.</examine_examples>"}]
    assert stream.feed("wer>sci") == [{"content": "sci"}]
    assert stream.feed("-fi</answer> trailing") == [{"content": "-fi"}]
    assert stream.close() == []
