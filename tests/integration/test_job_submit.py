"""The job entrypoints under Ray's real `ray job submit`, against a head started with `ray start
--head` with token authentication on (its own head, apart from the test session's cluster). The
main job runs in the default test run; the SFT, PRMU and RL jobs, each minutes long, under `slow`."""

from __future__ import annotations

import json

import pytest

from .jobs import submit, token_head

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def head():
    with token_head() as h:
        yield h


def test_a_client_without_the_token_is_refused(head, tmp_path):
    run = submit(head, ["python", "-c", "print('hello')"], token=None, home=tmp_path)  # no ~/.ray/auth_token
    assert run.returncode != 0
    assert "token" in (run.stdout + run.stderr).lower()


def test_the_main_job_runs_as_a_submitted_job(head, tmp_path):
    entry = ["python", "-m", "tagpr.jobs.pipeline", "--steps", "data,model", "--set", f"run.root={tmp_path / 'runs'}",
             "--set", f"data.root={tmp_path / 'data'}", "--set", "data.tasks=[LaMP_2]",
             "--set", f"model.policy={tmp_path / 'policy'}"]
    run = submit(head, entry)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "succeeded" in (run.stdout + run.stderr).lower()
    [run_dir] = (tmp_path / "runs").iterdir()
    assert (run_dir / "tagpr_config.yaml").is_file()
    assert (tmp_path / "data" / "LaMP_2" / "dev_questions.json").is_file()
    assert (tmp_path / "policy" / "config.json").is_file()


@pytest.mark.slow
def test_the_prmu_sft_and_rl_jobs_run_as_submitted_jobs(head, tmp_path):
    """PRMU, chains + SFT, then RL from that policy with that PRMU, each its own submitted job."""
    base = [f"run.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}", "data.tasks=[LaMP_2]",
            "data.synthetic.users={train: 24, dev: 6}", "data.synthetic.questions_per_user=3",
            f"model.policy={tmp_path / 'policy'}", f"chains.out={tmp_path / 'chains'}"]

    def job(module: str, *args: str, more: tuple[str, ...] = ()) -> str:
        sets = [a for o in (*base, *more) for a in ("--set", o)]
        run = submit(head, ["python", "-m", f"tagpr.jobs.{module}", *args, *sets], timeout=1200)
        assert run.returncode == 0, f"{module}: " + run.stdout[-3000:] + run.stderr[-3000:]
        return run.stdout

    job("pipeline", "--steps", "data,model")
    job("prmu", "train", "--out", str(tmp_path / "prmu"), more=("prmu.epochs=3",))
    job("chains", more=("chains.samples_per_question=1",))
    job("sft", "--out", str(tmp_path / "sft"), more=("sft.epochs=1",))
    job("rl", more=(f"model.policy={tmp_path / 'sft'}", f"prmu.checkpoint={tmp_path / 'prmu'}", "rl.eval_limit=0",
                    "rl.group_size=4", "rl.prompts_per_step=2", "rollout.max_tokens=24", "rollout.num_cpus=0",
                    "rl.stages=[{name: guided, steps: 2, weights: {format_task: 1.0, tag: 0.2, prmu: 0.3}}]"))
    rl_runs = [d for d in (tmp_path / "runs").iterdir() if (d / "rl_report.json").is_file()]
    assert len(rl_runs) == 1
    report = json.loads((rl_runs[0] / "rl_report.json").read_text())
    assert report["stages"]["guided"]["step"] == 2
