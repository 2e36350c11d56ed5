"""Integration tests: the session's Ray cluster, Serve and the tiny policy come from
tests/conftest.py (shared with tests/reliability, so one cluster serves both); here a trained
PRMU and a polling helper."""

from __future__ import annotations

import time

import pytest


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def serve_replicas(app: str, deployment: str) -> list[str]:
    """The actor names (namespace ``serve``) of ``deployment``'s live replicas in application ``app``."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and f"{app}#{deployment}" in a["name"]]


@pytest.fixture(scope="session")
def prmu_job(ray_cluster, tmp_path_factory):
    """A PRMU trained by the real job (Ray Train, 2 workers) on small synthetic data; the service tests
    serve its checkpoint."""
    from tagpr.config import load_config
    from tagpr.jobs.prmu import train
    from tagpr.lamp.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("prmu-job")
    cfg = load_config(None, [
        f"run.root={root / 'runs'}", f"data.root={root / 'data'}", "data.tasks=[LaMP_1, LaMP_2]",
        "data.synthetic.users={train: 48, dev: 12}", "data.synthetic.questions_per_user=3",
        "data.synthetic.profile_size=6", "prmu.num_workers=2", "prmu.epochs=25", "prmu.hidden_size=64",
        "prmu.max_length=64",
    ])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    result = train(cfg, log=lambda _: None)
    return cfg, result


@pytest.fixture(scope="session")
def preference_policy(tiny_policy, tmp_path_factory):
    """The tiny policy fine-tuned (one process, no Ray) to answer a LaMP-2 question with the tag its
    user's profile prefers (:mod:`tests.integration.preference`); returns the config it was trained
    with (serving must show the same number of profile items) and the folder."""
    from tagpr.config import load_config

    from .preference import train_preference_policy

    cfg = load_config(None, ["data.prompt_profile_items=4"])
    return cfg, train_preference_policy(cfg, tiny_policy, tmp_path_factory.mktemp("preference-policy"))


@pytest.fixture(scope="session")
def answering_policy(prmu_job, tiny_policy, tmp_path_factory):
    """The tiny policy fine-tuned briefly (one process, no Ray) to answer ``<answer>label</answer>``
    on the PRMU job's data: its samples are format-valid and differ in correctness, so RL tests get
    rewards that vary within a group (the random policy's are all 0 behind the format gate)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.train_strategy import DDPStrategy
    from tagpr.lamp.io import load_split
    from tagpr.sft.data import tokenize_chains
    from tagpr.sft.train import train_epochs
    from tagpr.tags import TagSet

    base, _ = prmu_job
    cfg = base.model_copy(update={"data": base.data.model_copy(update={"prompt_profile_items": 4}),
                                  "sft": base.sft.model_copy(update={"epochs": 2, "lr": 2e-3, "warmup_steps": 2})})
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    tags = TagSet(cfg.tags)
    splits = [load_split(cfg.data.root, task, cfg.data.train_split) for task in cfg.data.tasks]
    records = [{"task": s.task.name, "input": q.input, "profile": q.profile, "response": tags.render((), q.gold)}
               for s in splits for q in s.questions]
    data = tokenize_chains(records, tokenizer, tags, 4, 1024)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
    stepper = DDPStrategy(model, cfg.sft, cfg.sft.lr, 0.0, cfg.sft.batch_size, world=1)
    train_epochs(stepper, data, None, cfg.sft, tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("answering-policy")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
