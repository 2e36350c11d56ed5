"""Faults on live RL runs (the CPU stack, the tiny policy): a rollout worker killed mid-batch, a
learner worker killed, the learner killed while it writes a checkpoint, the whole job stopped and
resumed, reward-service replicas killed, the reward service slow and then unreachable. Each run
must finish (on its own, or on ``--resume``) with every prompt trained on exactly once, checked by
prompt id in the learner's step log, and a step retried after a rewind trained on the same prompts
as its first attempt."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from actors.cluster import free_port
from tests.integration.conftest import serve_replicas
from tests.reliability.conftest import deploy_untrained
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.live import AtStep, assert_each_prompt_trained_once, kill_one, learner_log, run_dir_under

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ["LaMP_1", "LaMP_2"]
PER_STEP = 2
# the learner waits for each step's groups (max_staleness 0) and checkpoints every 2 steps: a rewound
# run retrains the same prompts, so a retried step can be compared with its first attempt
SYNC = ("rl.max_staleness=0", "rollout.engine.kind=hf", "learner.checkpoint_every=2")


def stages(steps: int, prmu: bool = False) -> str:
    weights = "{format_task: 1.0, tag: 0.2" + (", prmu: 0.3}" if prmu else "}")
    return f"rl.stages=[{{name: guided, steps: {steps}, weights: {weights}}}]"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tagpr.config import SyntheticConfig
    from tagpr.lamp.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("live-data")
    write_synthetic(root, SyntheticConfig(users={"train": 8, "dev": 2}), TASKS)
    return root


@pytest.fixture
def overrides(data, tiny_policy, tmp_path):
    return [f"run.root={tmp_path / 'runs'}", f"data.root={data}", f"data.tasks=[{', '.join(TASKS)}]",
            "data.prompt_profile_items=4", f"model.policy={tiny_policy}", "rl.group_size=4",
            f"rl.prompts_per_step={PER_STEP}", "rollout.max_tokens=24", "rollout.prompts_per_request=2",
            "rollout.engine.max_model_len=1024", "rollout.num_cpus=0", "rl.eval_limit=0"]


@pytest.fixture
def rl(ray_cluster, overrides):
    """Runs the RL job in this process on the session's cluster with ``overrides`` plus ``more``."""
    from tagpr.config import load_config
    from tagpr.jobs.rl import train

    return lambda *more: train(load_config(None, [*overrides, *more]), log=lambda _: None)


def test_a_rollout_worker_killed_mid_batch_is_replaced_and_its_prompts_requeued(rl, tmp_path):
    """SIGKILL of the worker process (and its in-process vLLM engine) while it holds prompts."""
    import ray

    def kill_while_generating(_run_dir):
        buffer = ray.get_actor("tagpr-buffer")  # <run.name>-buffer
        deadline = time.monotonic() + 120
        while not (held := ray.get(buffer.stats.remote())["in_flight_by_worker"]):
            assert time.monotonic() < deadline, "the worker never held prompts"
            time.sleep(0.05)
        return held, kill_one("ray::RolloutWorker")

    fault = AtStep(tmp_path / "runs", 2, kill_while_generating)
    report = rl("rl.max_staleness=1", stages(6))
    held, _ = fault.result()
    assert_each_prompt_trained_once(Path(report.run_dir), 6, PER_STEP)
    (replaced,) = [e for e in report.pool_events if e["event"] == "replace"]
    assert replaced["worker"] in held and replaced["requeued"]  # it died holding prompts; they went back
    assert len(report.pool_events) == 2  # the first worker, then its replacement
    print(f"rollout worker kill: {len(replaced['requeued'])} prompt(s) re-queued, 6 steps, 0 lost, 0 twice")


def test_a_learner_worker_killed_is_retried_from_the_last_checkpoint(rl, tmp_path):
    """SIGKILL of the Ray Train worker after step 3 (checkpoint at step 2): Ray Train starts a new
    one, which loads the step-2 checkpoint and rewinds the buffer to it."""
    fault = AtStep(tmp_path / "runs", 3, lambda _run_dir: kill_one("ray::RayTrainWorker"))
    report = rl(*SYNC, stages(5), "learner.max_failures=1")
    fault.result()
    log = assert_each_prompt_trained_once(Path(report.run_dir), 5, PER_STEP)
    assert [m["step"] for m in log] == [1, 2, 3, 3, 4, 5]
    assert report.stages["guided"].step == 5


def test_a_learner_killed_while_writing_a_checkpoint_restarts_from_the_previous_one(rl, tmp_path):
    """The learner is killed halfway through writing the step-4 checkpoint (model and optimizer
    written, not yet published); the step-2 checkpoint is the newest complete one and the retry
    starts there."""
    from actors.learner import latest_checkpoint

    def at_the_kill(run_dir):
        marker = run_dir / "fault-crash-step-4"
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, "the learner was never killed"
            time.sleep(0.02)
        torn = run_dir / "checkpoints" / ".tmp-step-000004"
        return latest_checkpoint(run_dir).name, sorted(p.name for p in torn.iterdir())

    fault = AtStep(tmp_path / "runs", 1, at_the_kill)
    report = rl(*SYNC, stages(5), "learner.max_failures=1", "learner.fault_crash_at_step=4",
                "learner.fault_crash_point=checkpoint_write")
    newest_at_kill, torn = fault.result()
    run_dir = Path(report.run_dir)
    assert newest_at_kill == "step-000002"
    assert "model.safetensors" in torn and "buffer.json" not in torn  # cut off mid-write
    log = assert_each_prompt_trained_once(run_dir, 5, PER_STEP)
    assert [m["step"] for m in log] == [1, 2, 3, 4, 3, 4, 5]
    assert latest_checkpoint(run_dir).name == "step-000005"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_the_whole_job_stopped_with_ray_job_stop_resumes_from_its_checkpoint(overrides, tmp_path):
    """``ray job submit``, ``ray job stop`` after step 3, then ``ray job submit ... --resume RUN_DIR``
    on a head of its own with token auth, as a user runs it."""
    from actors.checkpoints import read_state
    from actors.learner import latest_checkpoint
    from tests.integration.jobs import ray_job, submit, token_head

    def job(*args: str) -> list[str]:
        sets = [a for o in (*overrides, *SYNC, stages(6)) for a in ("--set", o)]
        return ["python", "-m", "tagpr.jobs.rl", *sets, *args]

    with token_head() as head:
        run = submit(head, job(), "--no-wait", "--submission-id", "rl-first")
        assert run.returncode == 0, run.stderr[-3000:]
        stop = AtStep(tmp_path / "runs", 3, lambda _: ray_job(head, "stop", "rl-first", timeout=120))
        stopped = stop.result()
        assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
        status = ray_job(head, "status", "rl-first")
        assert "was stopped" in status.stdout
        run_dir = run_dir_under(tmp_path / "runs")
        before = [m["step"] for m in learner_log(run_dir)]
        start = read_state(latest_checkpoint(run_dir))["step"]
        resumed = submit(head, job("--resume", str(run_dir)), timeout=900)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert before[:3] == [1, 2, 3] and start in (2, 4)  # stopped in step 4 (or just after it)
    log = assert_each_prompt_trained_once(run_dir, 6, PER_STEP)
    assert [m["step"] for m in log] == [*before, *range(start + 1, 7)]  # resumed from the newest checkpoint
    assert (run_dir / "rl_report.json").is_file()


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    """The reward service at ``/live``: two scorer replicas, one ingress."""
    from ray import serve

    deploy_untrained("live", ["service.min_replicas=2", "service.max_replicas=2"],
                     tmp_path_factory.mktemp("live-service"), "TAGPR_LIVE_NO_TOKEN")
    yield f"http://127.0.0.1:{serve_port}/live"
    serve.delete("live")


def _kill_replica(deployment: str) -> str:
    import ray

    victim = serve_replicas("live", deployment)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    return victim


def test_reward_service_replicas_killed_during_a_run(rl, service, tmp_path):
    """A scorer replica killed after step 2, the ingress replica after step 4: the rollout
    workers' clients retry until Serve has replaced them; no worker dies, no reward is filled in."""
    kills = [AtStep(tmp_path / "runs", 2, lambda _: _kill_replica("PRMUScorer")),
             AtStep(tmp_path / "runs", 4, lambda _: _kill_replica("RewardIngress"))]
    report = rl("rl.max_staleness=1", stages(7, prmu=True), "rollout.reward_via=http", f"rollout.reward_url={service}",
                "rollout.reward_retries=6")
    victims = [k.result() for k in kills]
    log = assert_each_prompt_trained_once(Path(report.run_dir), 7, PER_STEP)
    assert all("reward/prmu" in m for m in log)  # every step weighed the service's PRMU term
    assert "reward unavailable" not in report.buffer["dropped"]
    assert [e["event"] for e in report.pool_events] == ["add"]  # the retries rode it out
    assert "PRMUScorer" in victims[0] and "RewardIngress" in victims[1]


@pytest.mark.parametrize("policy", ["default", "raise"])
def test_a_slow_then_unreachable_reward_service_during_a_run(rl, service, tmp_path, policy):
    """Behind a fault proxy: after step 1 every request is held 0.5 s (within the 2 s timeout);
    after step 2 held 3 s (beyond it) for 8 s, then refused for 8 s, then back. ``default``: the
    groups that could not be scored are not trained on and their prompts are re-queued; ``raise``:
    the worker fails, the pool replaces it and re-queues what it held. Either way the run finishes
    once the service is back."""
    target = urlparse(service)
    proxy = FaultProxy(target.port, free_port())
    def slow(_):
        proxy.delay_s = 0.5

    def outage(_):
        proxy.delay_s = 3.0
        time.sleep(8)
        proxy.delay_s = 0.0
        proxy.down()
        time.sleep(8)
        proxy.up()

    faults = [AtStep(tmp_path / "runs", 1, slow), AtStep(tmp_path / "runs", 2, outage)]
    try:
        report = rl("rl.max_staleness=1", stages(6, prmu=True), "rollout.reward_via=http",
                    f"rollout.reward_url={proxy.url}{target.path}", f"rollout.reward_failure_policy={policy}",
                    "rollout.reward_timeout_s=2", "rollout.reward_retries=1")
        for f in faults:
            f.result()
    finally:
        proxy.close()
    assert_each_prompt_trained_once(Path(report.run_dir), 6, PER_STEP)
    replaced = [e for e in report.pool_events if e["event"] == "replace"]
    if policy == "default":
        assert report.buffer["dropped"].get("reward unavailable", 0) > 0 and not replaced
    else:
        assert "reward unavailable" not in report.buffer["dropped"] and replaced
    print(f"slow/unreachable ({policy}): {report.buffer['dropped'].get('reward unavailable', 0)} group(s) "
          f"re-queued unscored, {len(replaced)} worker(s) replaced, 6 steps, 0 lost, 0 twice")
