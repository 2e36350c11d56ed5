"""The policy service against its raw engine: what serving costs in generated tokens per second.

One run, the tiny policy (random weights, so answers run long) on vLLM's CPU build here, measured
side by side:

- raw: the offline engine (``vllm.LLM``) in this process, ``CONCURRENCY`` prompts per generate
  call, back to back; run before and after the services, the faster run counts;
- for each backend (``serve_llm``: Ray Serve's ``LLMServer``; ``adapter``: the project's engine
  adapter behind ``@serve.batch``), ``tagpr serve policy``'s application on a local Ray cluster
  with ``CONCURRENCY`` clients each sending one chat completion at a time over HTTP (the user's
  profile inline);
- for ``serve_llm``, the same load sent straight to the ``LLMServer`` deployment's handle, without
  the HTTP proxy and the ingress, each response asked for whole (as the HTTP load's are) and as a
  stream of chunks: where the cost of serving sits.

Figure: completion tokens/s through the default backend's service / the raw engine (target
>= 0.9). Beside it, time to first token of streamed requests, p50 and p99, per backend.
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


async def _handle_load(backend, questions: list, stream: bool) -> dict:
    """The HTTP load's shape sent to the backend's client in this process (no proxy, no ingress),
    each response asked for whole or as a stream of chunks."""
    from tagpr.engines.base import Sampling

    sampling = Sampling(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=False)
    tokens, requests = 0, 0
    deadline = time.perf_counter() + DURATION

    async def worker(k: int) -> None:
        nonlocal tokens, requests
        i = k
        while time.perf_counter() < deadline:
            async for piece in backend.pieces(questions[i % len(questions)], sampling, stream):
                tokens += piece.completion_tokens
            requests += 1
            i += CONCURRENCY

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "requests": requests}


def _percentile(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _serve(cfg, policy: Path, port: int, questions: list, backend: str) -> dict:
    """One backend's application: HTTP load, streamed time to first token, and (``serve_llm``) the handle load."""
    from ray import serve

    from services.policy.backends import BACKENDS
    from services.policy.deploy import deploy

    cfg = cfg.model_copy(update={"policy_service": cfg.policy_service.model_copy(update={"backend": backend})})
    name = f"bench-{backend}"
    deploy(cfg, str(policy), token_env="TAGPR_BENCH_NO_TOKEN", name=name, route_prefix=f"/{backend}")
    url, model = f"http://127.0.0.1:{port}/{backend}", cfg.policy_service.model_name
    try:
        asyncio.run(_first_tokens(url, questions, model))  # warm-up: the engine's first calls compile
        out = {"service": asyncio.run(_load(url, questions, model))}
        ttft = sorted(asyncio.run(_first_tokens(url, questions, model)))
        out.update(ttft_s=ttft, ttft_p50_s=statistics.median(ttft), ttft_p99_s=_percentile(ttft, 0.99))
        if backend == "serve_llm":
            handle = serve.get_deployment_handle(f"LLMServer:{model}", app_name=name)
            client = BACKENDS.get(backend)(handle, cfg)
            out["handle"] = asyncio.run(_handle_load(client, questions, stream=False))
            out["handle_streamed"] = asyncio.run(_handle_load(client, questions, stream=True))
    finally:
        serve.delete(name)
    return out


def run() -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster on loopback
    import ray
    from ray import serve

    from actors.cluster import free_port
    from tagpr.models import build_tiny_policy

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp))
        policy = build_tiny_policy(cfg.model, cfg.tags, Path(tmp) / "policy")
        questions = _questions()
        raw_before = _raw(cfg, policy, questions)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            backends = {b: _serve(cfg, policy, port, questions, b) for b in ("serve_llm", "adapter")}
        finally:
            serve.shutdown()
            ray.shutdown()
        raw_after = _raw(cfg, policy, questions)
    # the faster of two raw runs, before and after the services, so that a slow spell of the
    # machine while the engine ran alone cannot flatter the ratio
    raw = max(raw_before, raw_after, key=lambda r: r["tokens_per_s"])
    default = backends[cfg.policy_service.backend]
    details = {"raw": raw, "raw_runs": [raw_before, raw_after], "backends": backends,
               "backend": cfg.policy_service.backend, "concurrency": CONCURRENCY,
               "max_tokens": MAX_TOKENS, "engine": cfg.rollout.engine.kind,
               "ratios": {b: r["service"]["tokens_per_s"] / raw["tokens_per_s"] for b, r in backends.items()},
               "handle_ratio": backends["serve_llm"]["handle"]["tokens_per_s"] / raw["tokens_per_s"],
               "handle_streamed_ratio": backends["serve_llm"]["handle_streamed"]["tokens_per_s"] / raw["tokens_per_s"],
               "ttft_p50_s": default["ttft_p50_s"], "ttft_p99_s": default["ttft_p99_s"]}
    return {"name": "policy_service_overhead",
            "figure": f"completion tokens/s at c={CONCURRENCY}, policy service ({cfg.policy_service.backend}) / raw "
                      "engine",
            "ratio": default["service"]["tokens_per_s"] / raw["tokens_per_s"], "target": ">= 0.9", "details": details}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    b = d["backends"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bars = {"raw engine": d["raw"]["tokens_per_s"], "LLMServer handle": b["serve_llm"]["handle"]["tokens_per_s"],
            "handle, streamed": b["serve_llm"]["handle_streamed"]["tokens_per_s"],
            "serve_llm HTTP": b["serve_llm"]["service"]["tokens_per_s"],
            "adapter HTTP": b["adapter"]["service"]["tokens_per_s"]}
    axes[0].bar(list(bars), list(bars.values()), color=["#999", "#8c8cd9", "#b3b3e6", "#4c72b0", "#dd8452"])
    axes[0].set_title(f"completion tokens/s, c={d['concurrency']}")
    axes[0].tick_params(axis="x", labelsize=8, labelrotation=20)
    for (name, r), color in zip(b.items(), ("#4c72b0", "#dd8452")):
        axes[1].hist(r["ttft_s"], bins=12, color=color, alpha=0.7,
                     label=f"{name}: p50 {r['ttft_p50_s']:.2f}, p99 {r['ttft_p99_s']:.2f}")
    axes[1].set_title("time to first token (s)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{result['figure']}: {result['ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(run()["details"], indent=1, default=str))
