import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagpr.tags import (
    ANSWER_LAST_ONCE,
    CLOSED,
    KNOWN_TAGS,
    NO_EMPTY,
    NO_NESTING,
    NO_OUTSIDE_TEXT,
    ORDER,
    REQUIRED,
    parse,
    render,
)

GOOD_CLS = render(
    [("examine_examples", "Items 1 and 3 are tagged comedy."), ("identify_patterns", "Comedy recurs."),
     ("infer_preference", "The user likes comedy."), ("compare_options", "comedy vs sci-fi"),
     ("summarize", "comedy")],
    "comedy",
)


def failed(tagset, text, task_type="classification"):
    return {v.constraint for v in tagset.check(text, task_type).violations}


def test_well_formed_response(tagset):
    c = tagset.check(GOOD_CLS, "classification")
    assert c.violations == () and c.parses and c.score == 1.0 and c.answer == "comedy"
    assert [s.tag for s in c.parsed.sections][-1] == "answer"


def test_generation_requires_draft(tagset):
    assert failed(tagset, GOOD_CLS, "generation") == {REQUIRED}
    c = tagset.check(GOOD_CLS, "generation")
    assert c.parses and c.score == 0.75  # three of the four required tags
    assert any("<draft>" in v.reason for v in c.violations)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<examine_examples>x</examine_examples><foo>y</foo><answer>a</answer>", {KNOWN_TAGS}),
        ("<examine_examples>x<answer>a</answer>", {CLOSED, NO_NESTING, ANSWER_LAST_ONCE}),
        ("x</verify><answer>a</answer>", {CLOSED, NO_OUTSIDE_TEXT}),
        ("<examine_examples>x<verify>y</verify></examine_examples><answer>a</answer>", {NO_NESTING}),
        ("hello <examine_examples>x</examine_examples><answer>a</answer> bye", {NO_OUTSIDE_TEXT}),
        ("<examine_examples> </examine_examples><answer>a</answer>", {NO_EMPTY}),
        ("<infer_preference>x</infer_preference><examine_examples>y</examine_examples><answer>a</answer>", {ORDER}),
        ("<answer>a</answer><summarize>s</summarize>", {ANSWER_LAST_ONCE}),
        ("<answer>a</answer><answer>b</answer>", {ANSWER_LAST_ONCE}),
        ("<examine_examples>x</examine_examples>", {ANSWER_LAST_ONCE}),
    ],
)
def test_each_constraint(tagset, text, expected):
    # REQUIRED is violated by all these short responses; the rest must be exactly the expected set.
    assert failed(tagset, text) - {REQUIRED} == expected


def test_all_violations_reported_with_reasons(tagset):
    text = "pre <bogus>x</bogus><infer_preference></infer_preference><examine_examples>y"
    c = tagset.check(text, "rating")
    assert c.failed == {KNOWN_TAGS, NO_OUTSIDE_TEXT, NO_EMPTY, REQUIRED, CLOSED, ANSWER_LAST_ONCE}
    reasons = " | ".join(v.reason for v in c.violations)
    for part in ("unknown tag <bogus>", "<infer_preference> is empty", "<examine_examples> is never closed",
                 "<compare_options> is required for rating tasks", "no <answer> section"):
        assert part in reasons
    assert not c.parses and c.score == 0.0  # what does not parse earns no tag reward


def test_text_that_only_looks_like_tags():
    p = parse("<answer>I <3 this, 2 < 5 and <B>bold</B></answer>")
    assert [s.tag for s in p.sections] == ["answer"] and p.sections[0].text == "I <3 this, 2 < 5 and <B>bold</B>"


def test_distribution(tagset):
    counts = tagset.distribution([GOOD_CLS, GOOD_CLS, "garbage"])
    assert counts["examine_examples"] == 2 and counts["draft"] == 0 and "answer" not in counts


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/ab_ xanswerexmi\n")), max_size=80) | st.text(max_size=80))
def test_parser_never_crashes(tagset, text):
    c = tagset.check(text, "generation")
    assert 0.0 <= c.score <= 1.0
    assert (c.answer is None) == (not any(s.tag == "answer" for s in c.parsed.sections))


section_text = st.text(alphabet=st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), min_size=1,
                       max_size=30).map(str.strip).filter(bool)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["examine_examples", "identify_patterns", "draft", "verify"]), section_text),
             max_size=6),
    section_text,
)
def test_render_then_parse_round_trips(tagset, sections, answer):
    text = tagset.render(sections, answer)
    c = tagset.check(text, "generation")
    assert [(s.tag, s.text) for s in c.parsed.sections] == [*sections, ("answer", answer)]
    assert c.answer == answer
    assert not (c.failed & {KNOWN_TAGS, CLOSED, NO_NESTING, NO_OUTSIDE_TEXT, ANSWER_LAST_ONCE})
