"""OpenRLHF's remote reward-model requests turned into reward items, without Ray or HTTP."""

from __future__ import annotations

import base64
import json

import pytest

from services.edge import RequestIssues, field_path
from services.reward.openrlhf import (
    COMMON_SPECIAL_TOKENS,
    QuerySplitter,
    answer,
    dataset_row,
    label_fields,
    special_tokens,
    to_batch,
)
from services.reward.schemas import OpenRLHFRequest, RewardValue, ScoreItem
from tagpr.config import load_config
from tagpr.credentials import presented_token
from tagpr.lamp.io import load_split
from tagpr.models import build_tiny_policy
from tagpr.tags import TagSet

CFG = load_config()
TAGS = TagSet(CFG.tags)
RESPONSE = ("<examine_examples>Both are sci-fi.</examine_examples><identify_patterns>sci-fi</identify_patterns>"
            "<infer_preference>Likes sci-fi.</infer_preference><compare_options>sci-fi over romance</compare_options>"
            "<answer>sci-fi</answer>")
CHAT = {  # (prompt as the chat template renders it, the EOS the response ends with)
    "chatml": ("<|im_start|>user\nWhich tag?<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
    "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhich tag?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "mistral": ("<s>[INST] Which tag? [/INST]", "</s>"),
    "gemma": ("<bos><start_of_turn>user\nWhich tag?<end_of_turn>\n<start_of_turn>model\n", "<eos>"),
}
SPLIT = QuerySplitter(COMMON_SPECIAL_TOKENS, keep=TAGS.tokens())


@pytest.mark.parametrize("chat", sorted(CHAT))
def test_the_eos_and_chat_markers_leave_the_response_so_its_format_holds(chat):
    prompt, eos = CHAT[chat]
    response = SPLIT.response(prompt + RESPONSE + eos, prompt)
    assert response.strip() == RESPONSE
    assert TAGS.check(prompt + RESPONSE + eos, "classification").score < 1  # unstripped it fails the format
    assert TAGS.check(response, "classification").score == 1


def test_padding_around_the_query_is_stripped_too():
    prompt, eos = CHAT["chatml"]
    assert SPLIT.response("<|endoftext|>" * 3 + prompt + RESPONSE + eos + "<|endoftext|>" * 2, prompt) == RESPONSE


def test_tag_tokens_are_never_stripped_even_when_listed_as_special():
    split = QuerySplitter(["<|im_end|>", "<answer>", "</answer>"], keep=TAGS.tokens())
    assert split.response("<answer>x</answer><|im_end|>", "") == "<answer>x</answer>"


def test_a_truncated_prompt_still_leaves_just_the_response():
    prompt = "<|im_start|>user\n" + "A long profile of past reviews. " * 20 + "<|im_end|>\n<|im_start|>assistant\n"
    stripped = SPLIT.strip(prompt)
    right = stripped[:150]  # the client cut the prompt's end (prompt_max_len, right truncation)
    assert SPLIT.response(right + RESPONSE, prompt) == RESPONSE
    left = stripped[-150:]  # or its beginning
    assert SPLIT.response(left + RESPONSE + "<|im_end|>", prompt) == RESPONSE


def test_a_query_without_its_prompt_is_all_response():
    assert SPLIT.response(RESPONSE + "</s>", "<s>[INST] Something else entirely [/INST]") == RESPONSE
    assert SPLIT.response(RESPONSE, "") == RESPONSE


def test_the_tiny_policys_special_tokens_are_read_from_its_tokenizer(tmp_path):
    policy = build_tiny_policy(CFG.model, CFG.tags, tmp_path / "policy")
    found = special_tokens(str(policy), allow_hub=False)
    assert {"<|im_end|>", "<|endoftext|>"} <= set(found)
    assert special_tokens(str(tmp_path / "missing"), allow_hub=False) is None


@pytest.mark.parametrize("label", [
    {"task": "LaMP_2", "gold": "sci-fi"},
    json.dumps({"task": "LaMP_2", "gold": "sci-fi"}),
])
def test_a_label_is_an_object_or_an_encoded_object(label):
    assert label_fields(label, None, 0) == {"task": "LaMP_2", "gold": "sci-fi"}
    assert label_fields(label, "LaMP_3", 0)["task"] == "LaMP_2"  # the label's own task wins over ?task=


@pytest.mark.parametrize("label, task, field, reason", [
    ("sci-fi", None, "labels[4]", "needs ?task="),
    ("", None, "labels[4]", "no label"),
    ("{not json", None, "labels[4]", "invalid JSON"),
    ("{}", None, None, None),
    ('["a"]', "LaMP_2", None, None),
    ({"task": "LaMP_2", "gold": "x", "response": "y"}, None, "labels[4].response", "not a label field"),
])
def test_label_mistakes_name_the_openrlhf_field(label, task, field, reason):
    if field is None:
        label_fields(label, task, 4)
        return
    with pytest.raises(RequestIssues) as err:
        label_fields(label, task, 4)
    assert err.value.issues[0][0] == field and reason in err.value.issues[0][1]


def test_a_plain_gold_takes_the_task_from_the_query_string():
    assert label_fields("sci-fi", "LaMP_2", 0) == {"task": "LaMP_2", "gold": "sci-fi"}


def request(query, labels, prompts=None):
    return OpenRLHFRequest(query=query, labels=labels, prompts=prompts)


def test_a_batch_reads_input_from_the_label_or_else_from_the_prompt():
    prompt, eos = CHAT["chatml"]
    labels = [{"task": "LaMP_2", "gold": "sci-fi", "input": "description: a starship"},
              {"task": "LaMP_2", "gold": "sci-fi"}]
    batch = to_batch(request([prompt + RESPONSE + eos] * 2, labels, [prompt] * 2), None, SPLIT)
    assert [x.input for x in batch.items] == ["description: a starship", "user\nWhich tag?\nassistant"]
    assert all(x.response == RESPONSE for x in batch.items)
    assert batch.field("items[0].input") == "labels[0].input" and batch.field("items[1].input") == "prompts[1]"
    assert batch.field("items[1].response") == "query[1]" and batch.field("items[1].profile[2].tag") == \
        "labels[1].profile[2].tag"
    assert batch.field("items[0]") == "labels[0]" and batch.field("stage") == "stage"


@pytest.mark.parametrize("labels, field, reason", [
    (['{"task": "LaMP_3", "gold": "five"}'], "labels[0].gold", "five"),
    (['{"task": "LaMP_3", "gold": ""}'], "labels[0].gold", "at least 1 character"),
    (['{"task": "LaMP_2"}'], "labels[0].gold", "required"),
    (['{"task": "LaMP_9", "gold": "x"}'], "labels[0].task", "LaMP_1"),
    ([{"task": "LaMP_2", "gold": "x", "colour": 1}], "labels[0].colour", "not permitted"),
    (["x", "y"], "labels", "has 2 entries"),
    (None, "labels", "required"),
])
def test_batch_mistakes_name_the_openrlhf_field(labels, field, reason):
    with pytest.raises(RequestIssues) as err:
        to_batch(request(["<answer>4</answer>"], labels), None, SPLIT)
    assert [f for f, _ in err.value.issues] == [field] and reason in err.value.issues[0][1], err.value.issues


def test_a_lone_surrogate_is_refused_where_it_stands():
    with pytest.raises(RequestIssues) as err:
        to_batch(request(["ok"], [{"task": "LaMP_2", "gold": "x", "input": "a\ud800"}]), None, SPLIT)
    assert err.value.issues[0][0] == "labels[0].input" and "U+D800" in err.value.issues[0][1]
    with pytest.raises(ValueError, match="lone surrogate U\\+DC00 at character 2"):
        ScoreItem(task="LaMP_2", input="x", response="ab\udc00", profile=[])
    with pytest.raises(ValueError, match="query"):
        request(["\ud83d"], ["x"])


@pytest.mark.parametrize("task", [f"LaMP_{k}" for k in range(1, 8)])
def test_a_dataset_rows_label_comes_back_as_the_question_it_was_made_from(fixtures_dir, task):
    q = load_split(fixtures_dir, task, "dev").questions[0]
    row = json.loads(json.dumps(dataset_row(q, TAGS)))  # as a line of the JSONL file OpenRLHF reads
    assert [m["role"] for m in row["messages"]] == ["system", "user"] and q.input in row["messages"][1]["content"]
    [item] = to_batch(request(["<answer>x</answer>"], [row["label"]]), None, SPLIT).items
    assert (item.task, item.gold, item.input) == (q.task, q.gold, q.input)
    assert item.profile == [dict(p) for p in q.profile] and item.user_id == q.user_id


def test_the_answer_has_one_finite_number_per_query_and_a_list_per_component():
    out = answer([RewardValue(reward=0.9, components={"format": 1.0, "prmu": 0.4}),
                  RewardValue(reward=0.0, components={"format": 0.0})])
    assert out.model_dump() == {"rewards": [0.9, 0.0], "scores": [0.9, 0.0],
                                "extra_logs": {"format": [1.0, 0.0], "prmu": [0.4, 0.0]}}
    assert answer([]).model_dump() == {"rewards": [], "scores": [], "extra_logs": {}}


def test_field_paths_index_lists_with_brackets():
    assert field_path("items", 0, "profile", 2, "text") == "items[0].profile[2].text"
    assert field_path("labels", 3) == "labels[3]" and field_path() == ""


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"),
    (basic("tagpr:abc"), "abc"), (basic(":abc"), "abc"), (basic("u:a:b"), "a:b"),  # the password may hold ':'
    (basic("no-colon"), None), ("Basic !!notbase64", None), ("Basic " + base64.b64encode(b"u:\xff").decode(), None),
    ("Digest abc", None), ("", None),
])
def test_the_token_comes_as_bearer_or_as_the_basic_password(header, token):
    assert presented_token(header) == token
