"""The PRMU step's encoding: new texts batched in order of token length against batches in the
order the texts arrive.

Encoding the texts is most of the demo's PRMU step (profile items, inputs and answers of the train
users, then of the held-out dev users). The step's calls to the encoder are recorded once with the
demo's data and settings, then replayed on two cold encoders, side by side: the encoder as it is
(each call's new texts sorted by token length before they are cut into batches) and the same
encoder fed the call's texts one input-order batch at a time, so every batch pads to whatever
happened to land in it. Both produce the same vectors to float error (reported).

    python -m benchmarks.run prmu
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Sequence

BATCH = 64


def _recorded_calls(root: Path) -> tuple[list[list[str]], dict]:
    """Every ``encode`` call of the demo's PRMU step up to its dev evaluation, without the training."""
    from tagpr.config import load_config
    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.prmu import checkpoint
    from tagpr.prmu.encoder import SentenceEncoder
    from tagpr.prmu.pairs import pairs_for_tasks
    from tagpr.prmu.train import PairData

    calls: list[list[str]] = []

    class Recording(SentenceEncoder):
        def encode(self, texts: Sequence[str]):
            calls.append(list(texts))
            return super().encode(texts)

    cfg = load_config("configs/demo.yaml", [f"data.root={root / 'data'}"])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    d, p = cfg.data, cfg.prmu
    enc = Recording(p.encoder, p.max_length, batch_size=BATCH, cache_size=p.embedding_cache)
    train, users = pairs_for_tasks(d.root, d.tasks, d.train_split, enc, p.negatives_per_question, d.skip_invalid,
                                   p.train_users)
    dev, _ = pairs_for_tasks(d.root, d.tasks, d.dev_split, enc, p.negatives_per_question, d.skip_invalid)
    index = {u: i for i, u in enumerate(users)}
    net = checkpoint.build_net(p, enc.dim, len(index))
    for pairs, user_index in ((train, index), ([x.without_user() for x in train], {}), (dev, index)):
        PairData.build(net, pairs, enc, user_index)
    return calls, {"train_pairs": len(train), "dev_pairs": len(dev), "encoder": p.encoder,
                             "max_length": p.max_length, "embedding_cache": p.embedding_cache}


def _replay(calls: list[list[str]], input_order: bool, info: dict) -> tuple[dict, dict]:
    import torch

    from tagpr.prmu.encoder import SentenceEncoder

    enc = SentenceEncoder(info["encoder"], info["max_length"], batch_size=BATCH, cache_size=info["embedding_cache"])
    enc.encode(["warm up the encoder"])
    enc._cache.clear()
    start = time.perf_counter()
    for texts in calls:
        if input_order:
            fresh = [t for t in dict.fromkeys(texts) if t not in enc._cache]
            for i in range(0, len(fresh), BATCH):
                enc.encode(fresh[i : i + BATCH])
        enc.encode(texts)
    seconds = time.perf_counter() - start
    texts = list(enc._cache)
    return ({"seconds": round(seconds, 1), "texts": len(texts), "texts_per_s": round(len(texts) / seconds, 1),
             "threads": torch.get_num_threads()}, dict(enc._cache))


def run() -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        calls, info = _recorded_calls(Path(tmp))
    by_length, vectors = _replay(calls, input_order=False, info=info)
    input_order, baseline = _replay(calls, input_order=True, info=info)
    diff = max((vectors[t] - baseline[t]).abs().max().item() for t in vectors)
    return {"name": "prmu_encoding", "figure": "PRMU step's encoding texts/s, length-ordered / input-ordered batches",
            # input-order batches of the demo's texts hold 1.3x the real tokens (380K vs 292K); sorted 1.01x
            "ratio": round(by_length["texts_per_s"] / input_order["texts_per_s"], 3), "target": ">= 1.2",
            "details": {"paths": {"length_ordered": by_length, "input_ordered": input_order},
                        "encode_calls": len(calls), "batch_size": BATCH, "max_abs_vector_difference": diff,
                        "torch_threads": torch.get_num_threads(), **info}}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    paths = d["paths"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(paths), [paths[p]["texts_per_s"] for p in paths], color=["tab:blue", "grey"])
    ax.set_ylabel("texts encoded per second")
    ax.set_title(f"PRMU step's {paths['length_ordered']['texts']} texts, {d['encoder']}, batches of "
                 f"{d['batch_size']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
