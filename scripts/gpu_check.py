"""The GPU check of the rollout stack: CUDA vLLM generation, a weight push into the engine, the NCCL
transport, a LoRA hot-load. Writes one JSON (``--out``); exits non-zero if a check fails.

    python scripts/gpu_check.py --out benchmarks/results/gpu_check.json [--model DIR]

On a machine without CUDA the same steps run on vLLM's CPU build with gloo in place of NCCL,
which is how the script itself is tested. NCCL needs one GPU per rank, so with a single GPU the
NCCL step is reported as skipped and the push goes through the object store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["<|im_start|>user\nWhich tag fits a film about a starship crew?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nRate this blender review: works well.<|im_end|>\n<|im_start|>assistant\n"]


def _forced_logprobs(model, gen, device) -> list[torch.Tensor]:
    out = []
    for c in gen.completions:
        ids = torch.tensor([gen.prompt_token_ids + c.token_ids], device=device)
        with torch.no_grad():
            logits = model(ids).logits[0, len(gen.prompt_token_ids) - 1:-1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids, device=device)[:, None])[:, 0])
    return out


def _max_gap(engine_gen, model, device) -> float:
    refs = _forced_logprobs(model, engine_gen, device)
    return max(float((torch.tensor(c.logprobs, device=device) - r).abs().max())
               for c, r in zip(engine_gen.completions, refs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--model", help="HF folder (default: build the embedded tiny policy)")
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args(argv)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tagpr.config import load_config
    from tagpr.engines import Sampling, make_engine
    from tagpr.models import build_tiny_policy

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = "bfloat16" if cuda else "float32"
    tol = 2e-2 if cuda else 1e-3  # bf16 kernels differ between vLLM and HF
    cfg = load_config()
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
                    "gpus": torch.cuda.device_count(), "dtype": dtype, "checks": {}}
    tmp = Path(tempfile.mkdtemp(prefix="tagpr-gpu-check-"))
    model_dir = args.model or str(build_tiny_policy(cfg.model, cfg.tags, tmp / "policy"))
    report["model"] = model_dir
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    ok = True

    # 1. generation through the engine adapter
    engine_cfg = cfg.rollout.engine.model_copy(update={"max_model_len": 1024, "gpu_memory_utilization": 0.5,
                                                       "enable_lora": True, "max_lora_rank": 8})
    start = time.perf_counter()
    engine = make_engine(engine_cfg, model_dir, dtype)
    startup = time.perf_counter() - start
    sampling = Sampling(n=8, temperature=1.0, max_tokens=128, seed=0)
    engine.generate(PROMPTS, sampling)
    prompts = [PROMPTS[i % 2] for i in range(args.prompts)]
    start = time.perf_counter()
    gens = engine.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for g in gens for c in g.completions)
    gap = _max_gap(gens[0], hf, device)
    report["checks"]["generation"] = {"engine_start_s": round(startup, 1), "tokens": tokens,
                                      "tokens_per_s": round(tokens / seconds, 1), "max_logprob_gap_vs_hf": gap,
                                      "ok": gap < tol}

    # 2. weight push into the engine (object store path: tensors -> engine.load_weights)
    g = torch.Generator(device="cpu").manual_seed(1)
    new = {k: (v.float().cpu() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
           for k, v in hf.state_dict().items()}
    nbytes = sum(t.nbytes for t in new.values())
    start = time.perf_counter()
    engine.load_weights(new.items(), timeout_s=120)
    push = time.perf_counter() - start
    hf.load_state_dict({k: v.to(device) for k, v in new.items()})
    gap = _max_gap(engine.generate(PROMPTS[:1], sampling)[0], hf, device)
    report["checks"]["weight_push"] = {"mb": round(nbytes / 2**20, 1), "seconds": round(push, 3),
                                       "gb_per_s": round(nbytes / push / 1e9, 2), "max_logprob_gap_after": gap,
                                       "ok": gap < tol}

    # 3. NCCL (gloo on CPU) transport from this process to a receiver process
    if cuda and torch.cuda.device_count() < 2:
        report["checks"]["collective"] = {"skipped": "NCCL needs one GPU per rank; this machine has one",
                                          "ok": True}
    else:
        report["checks"]["collective"] = _collective(new, "nccl" if cuda else "gloo")

    # 4. LoRA hot-load: outputs match PEFT
    peft = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                         init_lora_weights=False))
    peft.save_pretrained(tmp / "adapter")
    start = time.perf_counter()
    engine.load_adapter(str(tmp / "adapter"), adapter_id=1)
    gen = engine.generate(PROMPTS[:1], sampling)[0]
    load = time.perf_counter() - start
    gap = _max_gap(gen, peft, device)
    report["checks"]["lora"] = {"load_and_first_generate_s": round(load, 3), "max_logprob_gap_vs_peft": gap,
                                "ok": gap < tol}
    engine.close()

    ok = all(c["ok"] for c in report["checks"].values())
    report["ok"] = ok
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


def _collective(state: dict[str, torch.Tensor], backend: str) -> dict:
    import ray

    from actors.weights import CollectiveTransport

    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})

    @ray.remote(num_gpus=1 if backend == "nccl" else 0)
    def receive(update) -> tuple[float, float]:
        from actors.weights import TRANSPORTS

        start = time.perf_counter()
        tensors = TRANSPORTS.get(update.transport)().fetch(update)
        return time.perf_counter() - start, float(sum(t.double().sum() for _, t in tensors))

    try:
        sender = CollectiveTransport(backend=backend, timeout_s=120)
        update = sender.publish(state.items(), 1)
        ray.get(receive.remote(update))  # first contact builds the pair group
        update = sender.publish(state.items(), 2)
        seconds, checksum = ray.get(receive.remote(update))
        want = float(sum(t.double().sum() for t in state.values()))
        return {"backend": backend, "mb": round(update.nbytes / 2**20, 1), "seconds": round(seconds, 3),
                "gb_per_s": round(update.nbytes / seconds / 1e9, 2),
                "ok": abs(checksum - want) <= 1e-3 * max(1.0, abs(want))}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.exit(main())
