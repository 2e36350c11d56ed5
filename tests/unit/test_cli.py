import json
import subprocess
import sys

import pytest

from tagpr.jobs.cli import main


def test_eval_prints_and_writes_scores(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    rc = main(["eval", "--task", "LaMP_3", "--predictions", str(fixtures_dir / "LaMP_3/dev_predictions.json"),
               "--golds", str(fixtures_dir / "LaMP_3/dev_outputs.json"), "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["mae"] == pytest.approx(5 / 3) and printed["n"] == 3
    assert printed["MAE"] == printed["mae"] and printed["RMSE"] == printed["rmse"]  # LaMP's evaluator's keys


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--task", "LaMP_9", "--predictions", "p", "--golds", "g"], "unknown LaMP task 'LaMP_9'"),
        (["eval", "--task", "LaMP_2", "--predictions", "missing.json", "--golds", "missing.json"], "cannot open"),
        (["config", "show", "--set", "rl.group_size=1"], "--set: rl.group_size"),
        (["config", "show", "--config", "nope.yaml"], "file not found"),
        (["sft", "--set", "sft.resume_from=/no/such/ckpt"], "sft.resume_from: /no/such/ckpt is not an SFT epoch"),
        (["sft", "--set", "sft.strategy=zero"], "sft.strategy"),
        (["scale", "rollout", "-1"], "N must be >= 0"),
        (["serve", "prmu", "--checkpoint", "ckpt", "--host", "0.0.0.0", "--token-env", "TAGPR_TEST_NO_TOKEN"],
         "--host 0.0.0.0 is reachable from other machines"),
        (["serve", "policy", "--policy", "tests", "--token-env", "TAGPR_TEST_NO_TOKEN"], "not a policy folder"),
        (["eval", "--task", "LaMP_2", "--predictions", "p.json"], "--predictions needs --golds"),
        (["eval", "--task", "LaMP_2", "--predictions", "p", "--policy", "x"], "give --predictions"),
        (["eval", "--task", "LaMP_2", "--policy", "x"], "--policy needs --questions"),
        (["config", "show", "--set", "rollout.autoscale.grow_above=2"], "rollout.autoscale.grow_above"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, message):
    run = subprocess.run([sys.executable, "-m", "tagpr.jobs.cli", *argv], capture_output=True, text=True)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ")


def test_bad_lamp_file_names_record_and_field(tmp_path, fixtures_dir):
    golds = tmp_path / "g.json"
    golds.write_text(json.dumps({"task": "LaMP_2", "golds": [{"id": "1", "output": ["x"]}]}))
    run = subprocess.run([sys.executable, "-m", "tagpr.jobs.cli", "eval", "--task", "LaMP_2", "--predictions",
                          str(golds), "--golds", str(golds)], capture_output=True, text=True)
    assert run.returncode == 2 and "record '1': field 'output'" in run.stderr


def test_data_synth_report(tmp_path, capsys):
    rc = main(["data", "synth", "--out", str(tmp_path), "--report",
               "--set", "data.synthetic.users={train: 10, dev: 6}", "--set", "data.tasks=[LaMP_2, LaMP_3]"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "LaMP_2" in text and "profile reader" in text
    report = json.loads((tmp_path / "baselines.json").read_text())
    assert set(report) == {"LaMP_2", "LaMP_3"}
    assert (tmp_path / "tagpr_config.yaml").exists() and (tmp_path / "LaMP_3" / "dev_outputs.json").exists()


def test_tags_check_reads_stdin():
    run = subprocess.run([sys.executable, "-m", "tagpr.jobs.cli", "tags", "check", "--task", "LaMP_4", "-"],
                         input="<draft>x</draft><answer>Title</answer>", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["parses"] and result["answer"] == "Title"
    assert {v["constraint"] for v in result["violations"]} == {"required"}


def test_data_check_fails_then_skips(tmp_path, capsys):
    d = tmp_path / "LaMP_2"
    d.mkdir()
    good = {"id": "1", "input": "x", "profile": [{"id": "p", "description": "d", "tag": "comedy"}]}
    (d / "dev_questions.json").write_text(json.dumps([good, {"id": "2", "input": "y"}]))
    argv = ["data", "check", "--root", str(tmp_path), "--task", "LaMP_2"]
    assert main(argv) == 2
    assert "record '2': field 'profile': missing" in capsys.readouterr().err
    assert main([*argv, "--skip-invalid"]) == 0
    assert "1 loaded, 1 skipped (1 profile: missing); no outputs file" in capsys.readouterr().out


def test_loopback_hosts():
    from tagpr.credentials import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.5", "::", "reward.internal"]))
