"""`tagpr eval --policy`: generate answers for a LaMP questions file with vLLM, write the official
predictions file, score it against golds (the command in a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tagpr(*argv: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "tagpr.jobs.cli", *argv], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # standard output is the JSON alone; vLLM's lines went to the log file that standard error names
    assert "INFO" not in run.stderr and ("--policy" not in argv or "console.log" in run.stderr), run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("task, metric", [("LaMP_2", "accuracy"), ("LaMP_3", "mae"), ("LaMP_5", "rouge-1")])
def test_a_policy_answers_a_questions_file_and_is_scored(tiny_policy, tmp_path, task, metric):
    preds, golds = tmp_path / "dev_predictions.json", FIXTURES / task / "dev_outputs.json"
    result = tagpr("eval", "--task", task, "--policy", str(tiny_policy), "--questions",
                   str(FIXTURES / task / "dev_questions.json"), "--golds", str(golds),
                   "--write-predictions", str(preds), "--set", "rollout.max_tokens=32",
                   "--set", f"run.root={tmp_path / 'runs'}")
    written = json.loads(preds.read_text())
    questions = json.loads((FIXTURES / task / "dev_questions.json").read_text())
    assert written["task"] == task and [g["id"] for g in written["golds"]] == [q["id"] for q in questions]
    assert result["n"] == len(questions) and metric in result and 0 <= result["format_valid"] <= 1
    # the written file scores the same when scored as a predictions file
    assert tagpr("eval", "--task", task, "--predictions", str(preds), "--golds", str(golds))[metric] == result[metric]
