"""The policy service against its raw engine: what serving costs in generated tokens per second.

One run, the tiny policy (random weights, so every answer runs to ``MAX_TOKENS``) on the engine
rollout uses (vLLM's CPU build here):

- raw: the engine in this process, generating for ``CONCURRENCY`` prompts per call, back to back;
- service: ``tagpr serve policy``'s application on a local Ray cluster, ``CONCURRENCY`` clients
  each sending one chat completion at a time (the user's profile inline), the server merging
  them into generate calls of up to ``CONCURRENCY``.

Figure: completion tokens/s through the service / the raw engine on the same prompts (target
>= 0.9). Beside it, time to first token of streamed requests, p50 and p99: the engine adapter
generates a response whole, so the first token comes with the last.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

CONCURRENCY = 16
MAX_TOKENS = 64
DURATION = float(os.environ.get("TAGPR_BENCH_SECONDS", "20"))


def _questions(n: int = 64) -> list:
    from tagpr.config import SyntheticConfig
    from tagpr.lamp.io import Prompt
    from tagpr.lamp.synthetic import generate_split

    split = generate_split("LaMP_2", 1, 16, SyntheticConfig(seed=11, users={"b": 16}, questions_per_user=4,
                                                             profile_size=8))
    return [Prompt(q["id"], "LaMP_2", q["input"], tuple(q["profile"])) for q in split.questions][:n]


def _config(tmp: Path):
    from tagpr.config import load_config

    return load_config(None, [f"rollout.max_tokens={MAX_TOKENS}", "rollout.stop=[]", "rollout.num_cpus=1",
                              f"policy_service.max_batch_size={CONCURRENCY}",
                              "policy_service.batch_wait_timeout_s=0.05", f"run.root={tmp / 'runs'}"])


def _raw(cfg, policy: Path, questions: list) -> dict:
    """Completion tokens/s of the engine alone, ``CONCURRENCY`` prompts per generate call."""
    from tagpr.engines import make_engine
    from tagpr.engines.base import Sampling
    from tagpr.sft.data import prompt_text
    from tagpr.tags import TagSet

    engine = make_engine(cfg.rollout.engine, str(policy), cfg.model.dtype)
    tags = TagSet(cfg.tags)
    prompts = [prompt_text(engine.tokenizer, tags, q.task, q.input, q.profile, cfg.data.prompt_profile_items)
               for q in questions]
    sampling = Sampling(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=False)
    try:
        engine.generate(prompts[:CONCURRENCY], sampling)  # warm-up
        tokens, calls, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < DURATION:
            batch = [prompts[(calls * CONCURRENCY + i) % len(prompts)] for i in range(CONCURRENCY)]
            tokens += sum(len(g.completions[0].token_ids) for g in engine.generate(batch, sampling))
            calls += 1
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "calls": calls}


def _body(q, model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": q.input}], "stream": stream,
            "tagpr": {"task": q.task, "profile": [dict(p) for p in q.profile]}}


async def _load(url: str, questions: list, model: str) -> dict:
    """``CONCURRENCY`` clients for ``DURATION`` seconds: completion tokens/s (non-streamed)."""
    import httpx

    tokens, errors, latencies = 0, 0, []
    deadline = time.perf_counter() + DURATION
    async with httpx.AsyncClient(timeout=300) as client:
        async def worker(k: int) -> None:
            nonlocal tokens, errors
            i = k
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/chat/completions", json=_body(questions[i % len(questions)], model))
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    tokens += r.json()["usage"]["completion_tokens"]
                else:
                    errors += 1
                i += CONCURRENCY

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
        seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "errors": errors,
            "requests": len(latencies), "p50_s": statistics.median(latencies)}


async def _first_tokens(url: str, questions: list, model: str) -> list[float]:
    """Time to the first content or reasoning chunk of ``CONCURRENCY`` x 2 streamed requests, sent
    ``CONCURRENCY`` at a time."""
    import httpx

    async with httpx.AsyncClient(timeout=300) as client:
        async def one(q) -> float:
            t0 = time.perf_counter()
            async with client.stream("POST", f"{url}/v1/chat/completions", json=_body(q, model, True)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and ('"content"' in line or '"reasoning_content"' in line):
                        return time.perf_counter() - t0
            raise RuntimeError(f"stream without a token: HTTP {r.status_code}")

        out = []
        for k in range(2):
            out += await asyncio.gather(*(one(q) for q in questions[k * CONCURRENCY:(k + 1) * CONCURRENCY]))
    return out


def run() -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster on loopback
    import ray
    from ray import serve

    from actors.cluster import free_port
    from services.policy.deploy import deploy
    from tagpr.models import build_tiny_policy

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp))
        policy = build_tiny_policy(cfg.model, cfg.tags, Path(tmp) / "policy")
        questions = _questions()
        raw = _raw(cfg, policy, questions)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            deploy(cfg, str(policy), token_env="TAGPR_BENCH_NO_TOKEN", name="bench-policy", route_prefix="/")
            url, model = f"http://127.0.0.1:{port}", cfg.policy_service.model_name
            asyncio.run(_first_tokens(url, questions, model))  # warm-up: the engine's first calls compile
            service = asyncio.run(_load(url, questions, model))
            ttft = sorted(asyncio.run(_first_tokens(url, questions, model)))
        finally:
            serve.shutdown()
            ray.shutdown()
    details = {"raw": raw, "service": service, "concurrency": CONCURRENCY, "max_tokens": MAX_TOKENS,
               "engine": cfg.rollout.engine.kind, "ttft_p50_s": statistics.median(ttft),
               "ttft_p99_s": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))], "ttft_s": ttft}
    return {"name": "policy_service_overhead",
            "figure": f"completion tokens/s at c={CONCURRENCY}, policy service / raw engine",
            "ratio": service["tokens_per_s"] / raw["tokens_per_s"], "target": ">= 0.9", "details": details}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(["raw engine", "service"], [d["raw"]["tokens_per_s"], d["service"]["tokens_per_s"]],
                color=["#999", "#4c72b0"])
    axes[0].set_title(f"completion tokens/s, c={d['concurrency']}")
    axes[1].hist(d["ttft_s"], bins=12, color="#4c72b0")
    axes[1].set_title(f"time to first token (s): p50 {d['ttft_p50_s']:.2f}, p99 {d['ttft_p99_s']:.2f}")
    fig.suptitle(f"{result['figure']}: {result['ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(run()["details"], indent=1, default=str))
