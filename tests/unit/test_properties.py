"""Property-based tests (hypothesis) of the three parsers users feed directly: tagged responses, LaMP
files and configs. Any input ends in a result or the documented error, never another exception."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagpr.config import load_config
from tagpr.errors import ConfigError, DataError
from tagpr.lamp.io import iter_questions, load_outputs
from tagpr.tags import TagSet, parse, render

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TAG_NAMES = ["examine_examples", "identify_patterns", "infer_preference", "answer", "draft", "x", ""]
chunk = st.one_of(
    st.text(alphabet=string.printable + "äé漢<>/", max_size=12),
    st.sampled_from(TAG_NAMES).map(lambda t: f"<{t}>"),
    st.sampled_from(TAG_NAMES).map(lambda t: f"</{t}>"),
)
responses = st.lists(chunk, max_size=30).map("".join)


# ------------------------------------------------------------------ tags


@SETTINGS
@given(text=responses)
def test_parse_accounts_for_every_tag_it_sees(text):
    parsed = parse(text)
    names = set(parsed.tag_names)
    assert {s.tag for s in parsed.sections} <= names
    assert set(parsed.unclosed) <= names


@SETTINGS
@given(text=responses, task_type=st.sampled_from(["classification", "rating", "generation"]))
def test_check_never_raises_and_a_clean_verdict_has_an_answer(cfg, text, task_type):
    checked = TagSet(cfg.tags).check(text, task_type)
    if not checked.violations:
        assert checked.answer is not None


section_text = st.text(alphabet=string.ascii_letters + string.digits + " .,'-", min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and s)


@SETTINGS
@given(sections=st.lists(st.tuples(st.sampled_from(TAG_NAMES[:3]), section_text), max_size=5), answer=section_text)
def test_render_then_parse_round_trips(sections, answer):
    parsed = parse(render(sections, answer))
    assert [(s.tag, s.text) for s in parsed.sections] == [*sections, ("answer", answer)]
    assert not parsed.unclosed and not parsed.stray_closes and not parsed.nested and not parsed.outside_text


# ------------------------------------------------------------------ LaMP files

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
question_like = st.fixed_dictionaries(
    {}, optional={"id": st.one_of(st.text(max_size=4), st.integers(), st.none()),
                  "input": st.one_of(st.text(max_size=20), st.integers()),
                  "profile": st.one_of(st.lists(st.dictionaries(
                      st.sampled_from(["id", "tag", "description", "text", "title", "abstract", "score"]),
                      st.one_of(st.text(max_size=8), st.integers()), max_size=4), max_size=3), json_values)})


@SETTINGS
@given(records=st.lists(st.one_of(question_like, json_values), max_size=5), task=st.sampled_from(
    ["LaMP_1", "LaMP_2", "LaMP_3", "LaMP_7"]), skip=st.booleans())
def test_questions_load_or_fail_with_a_data_error(tmp_path, records, task, skip):
    path = tmp_path / "q.json"
    path.write_text(json.dumps(records))
    try:
        loaded = list(iter_questions(task, path, skip_invalid=skip))
    except DataError as exc:
        assert not skip and str(path) in str(exc)
    else:
        assert len(loaded) <= len(records) and all(q.input for q in loaded)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_as_a_questions_file(tmp_path, raw):
    path = tmp_path / "q.json"
    path.write_bytes(raw)
    try:
        list(iter_questions("LaMP_2", path, skip_invalid=True))
    except DataError as exc:
        assert str(path) in str(exc)


@SETTINGS
@given(doc=st.one_of(json_values, st.fixed_dictionaries({"task": st.sampled_from(["LaMP_2", "LaMP_9", 3]),
                                                          "golds": json_values})))
def test_outputs_load_or_fail_with_a_data_error(tmp_path, doc):
    path = tmp_path / "o.json"
    path.write_text(json.dumps(doc))
    try:
        task, golds = load_outputs(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert task.name == "LaMP_2" and all(isinstance(v, str) for v in golds.values())


# ------------------------------------------------------------------ configs

KEYS = ["rl.group_size", "rl.lr", "rl.stages.0.steps", "rl.stages.5.steps", "rollout.num_workers", "sft.epochs",
        "service.port", "run.name", "data.tasks", "nope.key", "rl", "tags.answer", "learner.resources"]
yaml_scalars = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(), st.none(),
                         st.text(alphabet=string.printable, max_size=12))


@SETTINGS
@given(key=st.sampled_from(KEYS), value=yaml_scalars)
def test_overrides_apply_or_fail_with_a_config_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as exc:
        assert exc.issues and all(source == "--set" for source, _, _ in exc.issues)
    else:
        assert cfg.rl.group_size >= 2


@SETTINGS
@given(text=st.text(alphabet=string.printable, max_size=120))
def test_any_config_file_text_loads_or_fails_with_a_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.issues


@pytest.mark.parametrize("override", ["=", "a..b=1", "rl.group_size", ".x=1"])
def test_malformed_overrides_name_the_problem(override):
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, [override])
