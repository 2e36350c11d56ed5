import json

import pytest

from tagpr.errors import DataError
from tagpr.lamp import io as lamp_io
from tagpr.lamp.io import iter_json_array, load_outputs, load_split, write_outputs
from tagpr.lamp.tasks import TASKS, get_task

ALL = [f"LaMP_{k}" for k in range(1, 8)]


@pytest.mark.parametrize("task", ALL)
def test_fixtures_load_for_every_task(fixtures_dir, task):
    split = load_split(fixtures_dir, task, "dev")
    _, golds = load_outputs(fixtures_dir / task / "dev_outputs.json")
    assert split.task.name == task and split.questions and split.golds == golds
    assert all(q.task == task and q.gold == golds[q.id] and q.key == f"{task}/{q.id}" for q in split.questions)
    assert split.report.loaded == len(split.questions) and not split.report.skipped


def test_split_without_outputs_has_no_golds(tmp_path):
    split = load_split(write_task(tmp_path, [q(0, user_id=7)]), "LaMP_2", "dev", require_golds=False)
    assert split.golds is None and [(x.id, x.task, x.gold, x.user_id) for x in split.questions] == [
        ("0", "LaMP_2", None, "7")]


def test_registry_has_the_seven_tasks():
    assert TASKS.names() == ALL
    assert get_task("LaMP-2").labels[0] == "sci-fi" and len(get_task("LaMP_2").labels) == 15
    assert get_task("LaMP_3").in_answer_space("4") and not get_task("LaMP_3").in_answer_space("7")
    assert get_task("LaMP_1").in_answer_space("[2]") and not get_task("LaMP_1").in_answer_space("2")


@pytest.mark.parametrize("chunk", [3, 17, 1 << 16])
def test_streaming_reader_matches_json_load(tmp_path, monkeypatch, chunk):
    data = [{"id": str(i), "x": [1.5, -2e3, None, True], "s": "é \"q\" ]["} for i in range(50)] + [12345, "tail"]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(data, indent=2))
    monkeypatch.setattr(lamp_io, "_CHUNK", chunk)
    assert list(iter_json_array(p)) == data


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"a": 1}', "expected a JSON list"),
        ('[{"id": "1"}, ', "malformed JSON"),
        ('[{"id": "1"} {"id": "2"}]', "expected ',' or ']'"),
        ("[1] [2]", "extra data"),
        ("", "expected a JSON list"),
    ],
)
def test_malformed_json(tmp_path, text, reason):
    p = tmp_path / "q.json"
    p.write_text(text)
    with pytest.raises(DataError, match=reason) as e:
        list(iter_json_array(p))
    assert e.value.file == str(p)


def write_task(tmp_path, questions, golds=None, task="LaMP_2"):
    d = tmp_path / task
    d.mkdir(exist_ok=True)
    (d / "dev_questions.json").write_text(json.dumps(questions))
    if golds is not None:
        (d / "dev_outputs.json").write_text(json.dumps({"task": task, "golds": golds}))
    return tmp_path


def q(i, **kw):
    rec = {"id": str(i), "input": "description: a film", "profile": [{"id": "p", "description": "d", "tag": "comedy"}]}
    rec.update(kw)
    return rec


@pytest.mark.parametrize(
    "record, field, reason",
    [
        ({"input": "x", "profile": []}, "id", "missing"),
        (q(1, id=[1]), "id", "string or an integer"),
        ({"id": "1", "profile": []}, "input", "missing"),
        (q(1, input=""), "input", "non-empty"),
        (q(1, input=3), "input", "non-empty"),
        ({"id": "1", "input": "x"}, "profile", "missing"),
        (q(1, profile={"a": 1}), "profile", "list"),
        (q(1, profile=[{"id": "p", "description": "d"}]), "profile[0].tag", "missing"),
        (q(1, profile=[{"id": "p", "description": {"x": 1}, "tag": "t"}]), "profile[0].description", "string"),
        (q(1, profile=["x"]), "profile[0]", "object"),
        (q(1, user_id=[2]), "user_id", "string or an integer"),
    ],
)
def test_bad_record_names_file_record_and_field(tmp_path, record, field, reason):
    root = write_task(tmp_path, [q(0), record])
    with pytest.raises(DataError) as e:
        load_split(root, "LaMP_2", "dev", require_golds=False)
    err = e.value
    assert err.field == field and reason in err.reason and err.file.endswith("dev_questions.json")
    assert err.record_id in ("1", "#1")


def test_skip_invalid_counts_and_reports(tmp_path):
    questions = [q(0), q(1, input=""), q(2, profile=None), q(0), q(3), "junk"]
    golds = [{"id": i, "output": "comedy"} for i in ("0", "1", "2", "3")]
    root = write_task(tmp_path, questions, golds)
    split = load_split(root, "LaMP_2", "dev", skip_invalid=True)
    assert [x.id for x in split.questions] == ["0", "3"] and set(split.golds) == {"0", "3"}
    assert split.report.loaded == 2 and split.report.total_skipped == 4
    assert split.report.skipped["id: duplicate id"] == 1
    assert "2 loaded, 4 skipped" in split.report.summary()


def test_ids_must_match_between_questions_and_outputs(tmp_path):
    root = write_task(tmp_path, [q(0), q(1)], [{"id": "0", "output": "comedy"}, {"id": "9", "output": "x"}])
    with pytest.raises(DataError, match="match no question"):
        load_split(root, "LaMP_2", "dev")
    root = write_task(tmp_path, [q(0), q(1)], [{"id": "0", "output": "comedy"}])
    with pytest.raises(DataError, match="question id\\(s\\) have no gold"):
        load_split(root, "LaMP_2", "dev")


@pytest.mark.parametrize(
    "payload, field, reason",
    [
        ([], None, "expected an object"),
        ({"golds": []}, "task", "missing"),
        ({"task": "LaMP_9", "golds": []}, "task", "unknown LaMP task"),
        ({"task": "LaMP_3", "golds": []}, "task", "expected LaMP_2"),
        ({"task": "LaMP_2", "golds": {}}, "golds", "not a list"),
        ({"task": "LaMP_2", "golds": [{"output": "x"}]}, "id", "missing"),
        ({"task": "LaMP_2", "golds": [{"id": "1"}]}, "output", "missing"),
        ({"task": "LaMP_2", "golds": [{"id": "1", "output": "a"}, {"id": "1", "output": "b"}]}, "id", "duplicate"),
    ],
)
def test_bad_outputs_file(tmp_path, payload, field, reason):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(payload))
    with pytest.raises(DataError) as e:
        load_outputs(p, get_task("LaMP_2"))
    assert e.value.field == field and reason in str(e.value)


def test_outputs_round_trip_and_unknown_task_in_file(tmp_path):
    p = write_outputs(tmp_path / "p" / "preds.json", "LaMP-4", {"1": "a headline", "2": ""})
    task, out = load_outputs(p)
    assert task.name == "LaMP_4" and out == {"1": "a headline", "2": ""}
    assert json.loads(p.read_text())["task"] == "LaMP_4"


def test_lamp6_loads_when_present(fixtures_dir):
    split = load_split(fixtures_dir, "LaMP_6", "dev")
    assert split.questions[0].profile[0]["title"] == "Re: sign contract"
