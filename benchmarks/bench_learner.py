"""Learner throughput on TagPR-shaped GRPO batches: shared-prefix scoring vs per sequence.

One run, one machine, one model: the embedded tiny policy's architecture, the synthetic RL prompt
set (7 tasks, the demo's profile items per prompt), G = 8 completions of about 100 tokens per
prompt, the demo's GRPO settings (two mini-batches, KL against a frozen reference). Each path runs
the same learner steps (:func:`tagpr.rl.learn.train_step`) in its own process, on the same threads,
so completion tokens/s and the step's peak resident memory above the loaded model compare side by
side. Completion logits only where the loss reads them hold on both paths; the shared path runs
each distinct prompt once and its completions on its key/value cache.

    python -m benchmarks.run learner
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS, GROUP, STEPS, THREADS = 8, 8, 3, 2
BUDGET = 2048  # learner.max_tokens_per_micro_batch of the bounded path: about two groups' positions
# path -> (shared prefix, max_tokens_per_micro_batch; 0: the whole update in one micro-batch)
PATHS = {"per_sequence": (False, 0), "shared": (True, 0), "shared_token_budget": (True, BUDGET)}


def setup(root: Path) -> Path:
    """The policy, and the step's rows as JSON (prompt token ids, completions) in ``root``."""
    from transformers import AutoTokenizer

    from tagpr.config import load_config
    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.models import build_tiny_policy
    from tagpr.rl.data import load_prompts
    from tagpr.sft.data import prompt_text
    from tagpr.tags import TagSet

    cfg = load_config("configs/demo.yaml", [f"data.root={root / 'data'}", "data.synthetic.users={train: 8, dev: 1}"])
    write_synthetic(root / "data", cfg.data.synthetic, cfg.data.tasks)
    policy = build_tiny_policy(cfg.model, cfg.tags, root / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tags, rng = TagSet(cfg.tags), random.Random(0)
    prompts = rng.sample(list(load_prompts(cfg).values()), PROMPTS)
    vocab = tokenizer.vocab_size
    rows = []
    for p in prompts:
        ids = tokenizer(prompt_text(tokenizer, tags, p.task, p.input, p.profile, cfg.data.prompt_profile_items),
                        add_special_tokens=False)["input_ids"]
        for _ in range(GROUP):
            n = max(20, min(180, int(rng.gauss(100, 30))))
            rows.append({"prompt": ids, "tokens": [rng.randrange(3, vocab) for _ in range(n)],
                         "advantage": rng.uniform(-1, 1)})
    (root / "rows.json").write_text(json.dumps(rows))
    return policy


def measure(policy: str, rows_path: str, mode: str, device: str = "cpu") -> dict:
    """One path in this process on ``device``: warm-up step, then ``STEPS`` timed steps. Peak memory is
    the process's resident set on the CPU, the allocator's peak on a GPU (scripts/gpu_train_check.py)."""
    import copy
    import resource

    import torch
    from transformers import AutoModelForCausalLM

    from tagpr.config import load_config
    from tagpr.rl.batch import MicroBatching, Row
    from tagpr.rl.forward import ResponseLM
    from tagpr.rl.learn import train_step
    from tagpr.rl.trajectory import PromptRef, Trajectory

    torch.set_num_threads(THREADS)
    dev = torch.device(device)
    rl = load_config("configs/demo.yaml").rl
    lm = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).to(dev)
    shared, budget = PATHS[mode]
    micro = MicroBatching(max_tokens=budget, shared_prefix=shared)
    reference = ResponseLM(copy.deepcopy(lm).eval().requires_grad_(False), shared)
    scorer = ResponseLM(lm, shared)
    opt = torch.optim.AdamW(lm.parameters(), lr=rl.lr)

    class Stepper:
        device = dev
        forward = scorer.__call__

        @staticmethod
        def backward(loss, last=True):
            loss.backward()

        @staticmethod
        def optimizer_step():
            opt.step()
            opt.zero_grad()

    spec = json.loads(Path(rows_path).read_text())

    def rows():
        return [Row(Trajectory(PromptRef(0, str(i // GROUP)), r["prompt"], r["tokens"], [-2.0] * len(r["tokens"]),
                               "", {}, 0, "bench"), r["advantage"]) for i, r in enumerate(spec)]

    def peak_mib() -> float:
        if dev.type == "cuda":
            return torch.cuda.max_memory_allocated(dev) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    def synced() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    tokens = sum(len(r["tokens"]) for r in spec)
    with torch.no_grad():
        scorer(**_one(rows()[:1], dev))  # allocator warm-up outside the peak
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = peak_mib()
    train_step(Stepper, rows(), rl, micro, pad_id=0, reference=reference)  # warm-up
    start = synced()
    for _ in range(STEPS):
        train_step(Stepper, rows(), rl, micro, pad_id=0, reference=reference)
    seconds = synced() - start
    return {"tokens_per_s": tokens * STEPS / seconds, "step_s": seconds / STEPS, "peak_step_mib": peak_mib() - base,
            "loaded_mib": base}


def _one(rows, device):
    from tagpr.rl.batch import collate

    return collate(rows, 0).to(device).model_inputs()


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policy = setup(root)
        spec = json.loads((root / "rows.json").read_text())
        out = {}
        for mode in PATHS:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_learner", str(policy),
                                   str(root / "rows.json"), mode], capture_output=True, text=True, check=True)
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    prompt_tokens = sum(len(r["prompt"]) for r in spec) / len(spec)
    completion_tokens = sum(len(r["tokens"]) for r in spec) / len(spec)
    shape = {"prompts": PROMPTS, "group": GROUP, "steps": STEPS, "threads": THREADS,
             "prompt_tokens_mean": round(prompt_tokens, 1), "completion_tokens_mean": round(completion_tokens, 1),
             "model": "embedded tiny policy (Qwen2, 4 layers, hidden 256)", "paths": out}
    speed = out["shared"]["tokens_per_s"] / out["per_sequence"]["tokens_per_s"]
    memory = out["shared"]["peak_step_mib"] / max(out["per_sequence"]["peak_step_mib"], 1e-9)
    bounded = out["shared_token_budget"]["peak_step_mib"] / max(out["shared"]["peak_step_mib"], 1e-9)
    return [
        {"name": "learner_shared_prefix", "figure": "learner completion tokens/s, shared prefix / per sequence",
         "ratio": round(speed, 3), "target": ">= 3", "details": shape},
        {"name": "learner_shared_prefix_memory",
         "figure": "learner step peak memory above the loaded model, shared prefix / per sequence",
         "ratio": round(memory, 3), "target": "<= 0.4", "details": shape},
        {"name": "learner_token_budget_memory",
         "figure": f"learner step peak memory, shared prefix with max_tokens_per_micro_batch {BUDGET} / the whole "
                   "update in one micro-batch",
         "ratio": round(bounded, 3), "target": "< 1",
         "details": {**shape, "budget": BUDGET, "tokens_per_s_vs_unbounded": round(
             out["shared_token_budget"]["tokens_per_s"] / out["shared"]["tokens_per_s"], 3)}},
    ]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = result["details"]["paths"]
    key, label = (("tokens_per_s", "completion tokens/s") if result["name"] == "learner_shared_prefix"
                  else ("peak_step_mib", "peak step memory above the model (MiB)"))
    colors = {"per_sequence": "grey", "shared": "tab:blue", "shared_token_budget": "tab:green"}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(paths), [paths[p][key] for p in paths], color=[colors[p] for p in paths])
    ax.set_ylabel(label)
    d = result["details"]
    ax.set_title(f"{d['prompts']} prompts x G={d['group']}, prompt {d['prompt_tokens_mean']:.0f} / "
                 f"completion {d['completion_tokens_mean']:.0f} tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(measure(*sys.argv[1:5])))
