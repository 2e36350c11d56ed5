"""Reading and writing LaMP's official files.

``{split}_questions.json``: a JSON list of ``{id, input, profile: [...], user_id?}``.
``{split}_outputs.json``: ``{"task": "LaMP_k", "golds": [{"id", "output"}]}``; predictions use
the same shape. Questions files of the real benchmark run to hundreds of MB, so they are read
as a stream of records; every record is validated, and an error names the file, the record id
and the field. With ``skip_invalid`` a bad record is counted by reason and skipped instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tagpr.errors import DataError, TagPRError
from tagpr.lamp.tasks import LampTask, get_task

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Prompt:
    """A user's question: the one record that data loading makes and the teacher, the rollout, the
    reward and the learner read, so what a question carries is defined once. Services convert it
    to and from their HTTP schemas at their edge only. ``gold`` is None where the split has no
    outputs file."""

    id: str
    task: str
    input: str
    profile: tuple[Mapping[str, Any], ...]
    gold: str | None = None
    user_id: str | None = None

    @property
    def key(self) -> str:
        """``task/id``: question ids are unique only within a task's file."""
        return f"{self.task}/{self.id}"


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.loaded} loaded"
        if self.skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
            text += f", {self.total_skipped} skipped ({reasons})"
        return text


@dataclass
class LampSplit:
    task: LampTask
    split: str
    questions: list[Prompt]
    report: LoadReport
    outputs: Path | None = None  # the outputs file the questions' golds came from

    @property
    def golds(self) -> dict[str, str] | None:
        """Each question's id -> its gold, built from the questions on each call (in a loop, read
        ``q.gold``); None when the split was loaded without an outputs file."""
        if self.outputs is None:
            return None
        return {q.id: q.gold for q in self.questions if q.gold is not None}


def iter_json_array(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one at a time, reading in chunks."""
    name = str(path)
    decoder = json.JSONDecoder()
    try:
        fh = open(path, "r", encoding="utf-8")
    except OSError as exc:
        raise DataError(name, f"cannot open: {exc.strerror or exc}") from None
    with fh:
        buf, offset, eof = "", 0, False  # offset: characters consumed before buf

        def fill() -> bool:
            nonlocal buf, eof
            try:
                chunk = fh.read(_CHUNK)
            except UnicodeDecodeError as exc:
                raise DataError(name, f"not UTF-8 text: {exc.reason}") from None
            eof = not chunk
            buf += chunk
            return bool(chunk)

        def skip_ws() -> None:
            nonlocal buf, offset
            while True:
                stripped = buf.lstrip()
                offset += len(buf) - len(stripped)
                buf = stripped
                if buf or not fill():
                    return

        def expect(char: str, what: str) -> None:
            nonlocal buf, offset
            skip_ws()
            if not buf.startswith(char):
                got = repr(buf[:20]) if buf else "end of file"
                raise DataError(name, f"malformed JSON at character {offset}: expected {what}, got {got}")
            buf, offset = buf[1:], offset + 1

        expect("[", "a JSON list '['")
        skip_ws()
        if buf.startswith("]"):
            return
        while True:
            skip_ws()
            while True:
                try:
                    value, end = decoder.raw_decode(buf)
                    # A number at the very end of the buffer may continue in the next chunk.
                    if end == len(buf) and not eof and fill():
                        continue
                    break
                except json.JSONDecodeError as exc:
                    if not eof and fill():
                        continue
                    raise DataError(name, f"malformed JSON at character {offset + exc.pos}: {exc.msg}") from None
            yield value
            buf, offset = buf[end:], offset + end
            skip_ws()
            if buf.startswith("]"):
                buf, offset = buf[1:], offset + 1
                skip_ws()
                if buf:
                    raise DataError(name, f"malformed JSON at character {offset}: extra data after the list")
                return
            expect(",", "',' or ']'")


def _record_id(record: Any) -> str | None:
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and not isinstance(record["id"], bool):
        return str(record["id"])
    return None


def validate_question(task: LampTask, record: Any, file: str, index: int) -> Prompt:
    """A validated ``Prompt`` (without its gold: that is in the outputs file), or a ``DataError``
    naming the record and the field."""
    rid = _record_id(record)
    ref = rid if rid is not None else f"#{index}"
    if not isinstance(record, dict):
        raise DataError(file, f"expected an object, got {type(record).__name__}", ref)
    if "id" not in record:
        raise DataError(file, "missing", ref, "id")
    if rid is None:
        raise DataError(file, "must be a string or an integer", ref, "id")
    if "input" not in record:
        raise DataError(file, "missing", ref, "input")
    if not isinstance(record["input"], str) or not record["input"].strip():
        raise DataError(file, "must be a non-empty string", ref, "input")
    if "profile" not in record:
        raise DataError(file, "missing", ref, "profile")
    profile = record["profile"]
    if not isinstance(profile, list):
        raise DataError(file, "must be a list of profile items", ref, "profile")
    for j, item in enumerate(profile):
        where = f"profile[{j}]"
        if not isinstance(item, dict):
            raise DataError(file, "must be an object", ref, where)
        for f in task.profile_fields:
            value = item.get(f)
            if value is None:
                raise DataError(file, f"missing (required for {task.name})", ref, f"{where}.{f}")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError(file, "must be a string", ref, f"{where}.{f}")
    user_id = record.get("user_id")
    if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, (str, int))):
        raise DataError(file, "must be a string or an integer", ref, "user_id")
    return Prompt(rid, task.name, record["input"], tuple(profile), user_id=None if user_id is None else str(user_id))


def iter_questions(
    task: LampTask | str, path: str | os.PathLike[str], report: LoadReport | None = None, skip_invalid: bool = False
) -> Iterator[Prompt]:
    """Stream validated questions; with ``skip_invalid`` bad records are counted in ``report``."""
    task = get_task(task) if isinstance(task, str) else task
    report = report if report is not None else LoadReport()
    seen: set[str] = set()
    for index, record in enumerate(iter_json_array(path)):
        try:
            question = validate_question(task, record, str(path), index)
            if question.id in seen:
                raise DataError(str(path), "duplicate id", question.id, "id")
        except DataError as exc:
            if not skip_invalid:
                raise
            report.skipped[f"{exc.field or 'record'}: {exc.reason}"] += 1
            continue
        seen.add(question.id)
        report.loaded += 1
        yield question


def load_outputs(path: str | os.PathLike[str], task: LampTask | None = None) -> tuple[LampTask, dict[str, str]]:
    """Read an outputs-shaped file (golds or predictions): (task, id -> output)."""
    name = str(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise DataError(name, f"cannot open: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(name, f"not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise DataError(name, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(name, 'expected an object {"task": ..., "golds": [...]}')
    if not isinstance(data.get("task"), str):
        raise DataError(name, "missing or not a string", field="task")
    try:
        file_task = get_task(data["task"])
    except TagPRError as exc:
        raise DataError(name, str(exc), field="task") from None
    if task is not None and file_task.name != task.name:
        raise DataError(name, f"is {file_task.name}, expected {task.name}", field="task")
    golds = data.get("golds")
    if not isinstance(golds, list):
        raise DataError(name, "missing or not a list", field="golds")
    out: dict[str, str] = {}
    for index, rec in enumerate(golds):
        rid = _record_id(rec)
        ref = rid if rid is not None else f"#{index}"
        if not isinstance(rec, dict):
            raise DataError(name, "expected an object", ref)
        if rid is None:
            raise DataError(name, "missing, or not a string or an integer", ref, "id")
        if "output" not in rec:
            raise DataError(name, "missing", ref, "output")
        if isinstance(rec["output"], (list, dict)):
            raise DataError(name, "a list or an object, not one output", ref, "output")
        if rid in out:
            raise DataError(name, "duplicate id", rid, "id")
        out[rid] = str(rec["output"])  # as LaMP's evaluator reads a scalar: null is "None", true is "True"
    return file_task, out


def split_paths(root: str | os.PathLike[str], task: str, split: str) -> tuple[Path, Path]:
    base = Path(root) / task
    return base / f"{split}_questions.json", base / f"{split}_outputs.json"


def load_split(
    root: str | os.PathLike[str], task: str, split: str, skip_invalid: bool = False, require_golds: bool = True
) -> LampSplit:
    """The questions of ``root/LaMP_k/{split}_*.json``, each with its gold from the outputs file (ids
    cross-checked)."""
    lamp_task = get_task(task)
    q_path, o_path = split_paths(root, lamp_task.name, split)
    report = LoadReport()
    questions = list(iter_questions(lamp_task, q_path, report, skip_invalid))
    if o_path.exists():
        _, all_golds = load_outputs(o_path, lamp_task)
        q_ids = {q.id for q in questions}
        unmatched = [i for i in all_golds if i not in q_ids]
        if unmatched and not skip_invalid:
            raise DataError(str(o_path), f"{len(unmatched)} gold id(s) match no question, e.g. {unmatched[:5]}")
        missing = [q.id for q in questions if q.id not in all_golds]
        if missing:
            if not skip_invalid:
                raise DataError(str(o_path), f"{len(missing)} question id(s) have no gold, e.g. {missing[:5]}")
            report.skipped["no gold"] += len(missing)
            report.loaded -= len(missing)
        questions = [replace(q, gold=all_golds[q.id]) for q in questions if q.id in all_golds]
        return LampSplit(lamp_task, split, questions, report, o_path)
    if require_golds:
        raise DataError(str(o_path), "file not found (pass require_golds=False to load questions only)")
    return LampSplit(lamp_task, split, questions, report)


def write_outputs(path: str | os.PathLike[str], task: str, outputs: Mapping[str, str]) -> Path:
    """Write predictions (or golds) in LaMP's outputs shape."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"task": get_task(task).name, "golds": [{"id": i, "output": o} for i, o in outputs.items()]}
    target.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    return target


def write_questions(path: str | os.PathLike[str], questions: list[dict[str, Any]]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(questions, indent=1, ensure_ascii=False), encoding="utf-8")
    return target
