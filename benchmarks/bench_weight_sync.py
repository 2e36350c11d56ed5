"""Weight push through the object-store transport vs a raw object-store transfer of the same bytes.

Two layouts of the same weights: separate tensors, and views into one flat buffer (what a learner
has after moving its parameters into one buffer); the target applies to the flat one.

For a 10M-parameter model and a 135M one (SmolLM2-135M's shapes), to 1-3 receiver actors: the
push is ``publish`` (tensors -> numpy buckets -> ``ray.put``) plus every receiver fetching all
tensors; the raw transfer is one ``ray.put`` of the same bytes as one array plus every receiver
reading it (zero-copy on both sides, the push's receivers also building every tensor), so the
ratio is the protocol's cost over the bare transfer. On this stack most of that cost is the put:
one array is copied into the object store by parallel memcpy, a bucket of many arrays array by
array. Loading into a vLLM
engine comes on top (``scripts/gpu_check.py`` measures it; 0.05 s for 16 MB on this CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

# The 135M entry has SmolLM2-135M's shapes (grouped KV, 30 layers) with its output layer untied, as
# ``tagpr model import-gguf`` writes it: 163M parameters in all.
SIZES = {"10M": dict(hidden=256, layers=8, inter=1024, vocab=8192, kv=128),
         "135M": dict(hidden=576, layers=30, inter=1536, vocab=49152, kv=192)}
REPEATS = 10


def _views(flat: torch.Tensor, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors as views into one flat buffer, as a learner with flattened parameters keeps them."""
    out, offset = {}, 0
    for name, t in state.items():
        out[name] = flat[offset:offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out


def _state(hidden: int, layers: int, inter: int, vocab: int, kv: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g), "lm_head.weight":
         torch.randn(vocab, hidden, generator=g)}
    shapes = {"self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (kv, hidden),
              "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, hidden),
              "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
              "mlp.down_proj.weight": (hidden, inter), "input_layernorm.weight": (hidden,)}
    for i in range(layers):
        for name, shape in shapes.items():
            s[f"model.layers.{i}.{name}"] = torch.randn(*shape, generator=g)
    return s


class Receiver:
    def __init__(self):
        from actors.weights import WeightLoader

        self.loader = WeightLoader()

    def fetch(self, update) -> int:
        """Every tensor materialized (zero-copy views), ready for ``Engine.load_weights``."""
        return len(list(self.loader.fetch(update)))

    def raw(self, ref_list) -> int:
        import ray

        return len(ray.get(ref_list[0]))


def run() -> dict:
    import ray

    from actors.weights import ObjectStoreTransport

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    receivers = [ray.remote(Receiver).options(num_cpus=0).remote() for _ in range(3)]
    transport = ObjectStoreTransport()
    rows = []
    try:
        for size, shape in SIZES.items():
            state = _state(**shape)
            nbytes = sum(t.nbytes for t in state.values())
            params = sum(t.numel() for t in state.values())
            same_bytes = np.concatenate([t.numpy().view(np.uint8).ravel() for t in state.values()])
            flat = torch.cat([t.reshape(-1) for t in state.values()])
            layouts = {"separate": state, "flat": _views(flat, state)}
            for n in (1, 2, 3):
                times: dict[str, list[float]] = {"separate": [], "flat": [], "raw": []}
                for rep in range(REPEATS):
                    for layout, tensors in layouts.items():
                        t0 = time.perf_counter()
                        update = transport.publish(tensors.items(), rep)
                        ray.get([r.fetch.remote(update) for r in receivers[:n]])
                        times[layout].append(time.perf_counter() - t0)
                        del update
                    t0 = time.perf_counter()
                    blob = ray.put(same_bytes)
                    ray.get([r.raw.remote([blob]) for r in receivers[:n]])
                    times["raw"].append(time.perf_counter() - t0)
                    del blob
                best = {k: min(v) for k, v in times.items()}
                rows.append({"model": size, "params": params, "mb": round(nbytes / 2**20, 1), "receivers": n,
                             "push_flat_s": round(best["flat"], 4), "push_separate_s": round(best["separate"], 4),
                             "raw_s": round(best["raw"], 4), "ratio": round(best["flat"] / best["raw"], 3),
                             "ratio_separate": round(best["separate"] / best["raw"], 3)})
    finally:
        for r in receivers:
            ray.kill(r)
        if started:
            ray.shutdown()
    worst = max(r["ratio"] for r in rows)
    return {"name": "weight_sync_object_store", "ratio": worst, "target": "<= 1.3",
            "figure": "weight push (flat-parameter learner) / raw object-store transfer, worst case",
            "details": {"rows": rows, "repeats": REPEATS, "bucket_mb": transport.bucket_bytes // 2**20,
                        "note": "best of repeats"}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["details"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, size in zip(axes, SIZES):
        sel = [r for r in rows if r["model"] == size]
        x = np.arange(len(sel))
        ax.bar(x - 0.27, [r["raw_s"] for r in sel], 0.27, label="raw transfer", color="#999")
        ax.bar(x, [r["push_flat_s"] for r in sel], 0.27, label="push, flat buffer", color="#2a7")
        ax.bar(x + 0.27, [r["push_separate_s"] for r in sel], 0.27, label="push, separate tensors", color="#c84")
        ax.set_xticks(x, [f"{r['receivers']} recv" for r in sel])
        ax.set_title(f"{size} ({sel[0]['mb']} MiB)" if sel else size)
        ax.set_ylabel("seconds")
    axes[0].legend()
    fig.suptitle(f"Object-store weight push vs raw transfer (worst ratio {result['ratio']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
