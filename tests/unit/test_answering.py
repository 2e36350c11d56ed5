"""What serving the policy needs without Ray: users' profiles and responses split for the client."""

from __future__ import annotations

import json

import pytest

from tagpr.answering import Answer, ProfileStore, UserProfile
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
