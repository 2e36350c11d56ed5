"""SFT trainer throughput against a plain torch loop (what Ray Train and the training strategy cost),
with packed rows and with length-grouped batches against shuffled padded ones (what ``sft.packing``
and ``sft.length_grouping`` save), and with each prompt run once for its chains against every chain
run with its prompt (what ``sft.shared_prefix`` saves where several chains answer one question).

One run, one machine, one model: the embedded tiny policy, the demo's SFT settings (batch size,
precision, learning rate), TagPR prompts from the synthetic users with the demo's profile items and
the gold answer as the response. Both paths train the same batches in the same order, each in its
own process on the same threads: the trainer as ``tagpr sft`` runs it (Ray Train, one worker whose
CPU share sets its threads, ``sft.strategy``), the plain loop as model, AdamW and backward in one
process. The plain loop lays batches out as the demo does (``sft.packing``, ``sft.length_grouping``);
the trainer runs three layouts: shuffled padded batches, packed rows, and padded batches grouped by
length in runs of 4 batches. The demo's layout is compared with the plain loop, the other two with
shuffled padded batches. Shared prompts train on tagged chains from the chains job's teacher and
labeler, G per question (2 as ``chains.samples_per_question`` defaults to, 4 as configs/lamp-qwen3.yaml),
with ``sft.shared_prefix`` on and off. Tokens/s counts the batches' tokens without padding, from the
first step's end on.

    python -m benchmarks.run sft
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS, STEPS = 2, 24
GROUPS = (2, 4)  # chains per question in the shared-prompt runs
# layout -> (overrides, the data it trains on)
LAYOUTS = {"trainer_padded": (("sft.packing=false", "sft.length_grouping=0"), "answers"),
           "trainer_packed": (("sft.packing=true", "sft.length_grouping=0"), "answers"),
           "trainer_grouped": (("sft.packing=false", "sft.length_grouping=4"), "answers"),
           **{f"chains{g}_{mode}": (("sft.packing=false", "sft.length_grouping=0", f"sft.shared_prefix={mode}"),
                                    f"chains{g}") for g in GROUPS for mode in ("off", "on")}}
PATHS = ("plain", *LAYOUTS)


def _config(root: Path, *overrides: str):
    from tagpr.config import load_config

    return load_config("configs/demo.yaml", [f"data.root={root / 'data'}", "data.synthetic.users={train: 48, dev: 1}",
                                              "sft.epochs=1", "sft.num_workers=1", f"cluster.num_cpus={THREADS}",
                                              f"run.root={root / 'runs'}", *overrides])


def _setup(root: Path) -> tuple[Path, int]:
    """The policy, and ``STEPS`` batches' worth of tokenized examples pickled in ``root``: gold answers
    (``answers.pkl``), and tagged chains G per question (``chains{G}.pkl``)."""
    import random

    import pandas as pd
    from transformers import AutoTokenizer

    from tagpr.jobs.chains import GenerateAndLabel, question_rows
    from tagpr.lamp.io import load_split
    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.models import build_tiny_policy
    from tagpr.sft.data import tokenize_chains
    from tagpr.tags import TagSet

    cfg = _config(root)
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    policy = build_tiny_policy(cfg.model, cfg.tags, root / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tags = TagSet(cfg.tags)
    n = STEPS * cfg.sft.batch_size

    def save(name: str, records: list[dict]) -> None:
        data = tokenize_chains(records, tokenizer, tags, cfg.data.prompt_profile_items, cfg.sft.max_length)
        (root / f"{name}.pkl").write_bytes(pickle.dumps(data))

    answers = [{"task": s.task.name, "input": q.input, "profile": q.profile, "response": tags.render((), q.gold)}
               for s in (load_split(cfg.data.root, t, cfg.data.train_split) for t in cfg.data.tasks)
               for q in s.questions]
    save("answers", random.Random(0).sample(answers, n))
    questions = random.Random(0).sample(question_rows(cfg, cfg.data.train_split, set()), n)
    for g in GROUPS:
        chains = GenerateAndLabel(_config(root, f"chains.samples_per_question={g}").model_dump(mode="json"))
        rows = chains(pd.DataFrame(questions[:n // g]))
        save(f"chains{g}", [r for r in rows.to_dict("records") if r["response"] and not r["error"]])
    return policy, tokenizer.pad_token_id


def _plain(root: Path, policy: str, pad_id: int) -> dict:
    """Model, AdamW (with the strategy's clipping and precision) and backward: no Ray, no strategy."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from actors.train_strategy import resolve_precision
    from tagpr.sft.train import batches, epoch_order, row_length

    torch.set_num_threads(THREADS)
    cfg = _config(root).sft
    data = pickle.loads((root / "answers.pkl").read_bytes())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    order = epoch_order([len(ids) for ids in data.input_ids], cfg, epoch=0)
    tokens, warm = 0, None
    for batch, n_tokens in batches(data, cfg.batch_size, order, pad_id, row_length(cfg)):
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        if warm is None:
            warm = time.perf_counter()
        else:
            tokens += n_tokens
    return {"tokens_per_s": tokens / (time.perf_counter() - warm), "threads": torch.get_num_threads(),
            "precision": precision}


def _trainer(root: Path, policy: str, pad_id: int, layout: str) -> dict:
    """The project's SFT trainer on a local Ray cluster of ``THREADS`` CPUs, one worker, with the
    batches of ``layout``."""
    import ray

    from actors.cluster import connect
    from actors.sft_trainer import train_on_ray
    from tagpr.sft.data import prompt_length

    overrides, name = LAYOUTS[layout]
    cfg = _config(root, *overrides)
    connect(cfg.cluster, log_to_driver=False)
    data = pickle.loads((root / f"{name}.pkl").read_bytes())
    start = time.perf_counter()
    ckpt = train_on_ray(cfg.sft, data, None, policy, root / f"ray_train_{layout}", seed=0)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    ray.shutdown()
    return {"tokens_per_s": state["tokens_per_s"], "job_s": time.perf_counter() - start,
            "strategy": cfg.sft.strategy, "shared_prefix": state["shared_prefix"], "examples": len(data),
            "prompt_tokens_mean": round(sum(map(prompt_length, data.labels)) / len(data), 1),
            "tokens_mean": round(sum(map(len, data.input_ids)) / len(data), 1)}


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policy, pad_id = _setup(root)
        data = pickle.loads((root / "answers.pkl").read_bytes())
        out = {}
        for path in PATHS:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_sft", path, str(root), str(policy),
                                   str(pad_id)], capture_output=True, text=True, check=True)
            out[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        cfg = _config(root).sft
    lengths = [len(x) for x in data.input_ids]
    details = {"steps": STEPS, "batch_size": cfg.batch_size, "precision": out["plain"]["precision"],
               "packing": cfg.packing, "length_grouping": cfg.length_grouping, "threads": THREADS,
               "tokens_mean": round(sum(lengths) / len(lengths), 1),
               "model": "embedded tiny policy (Qwen2, 4 layers, hidden 256)"}
    rate = {path: out[path]["tokens_per_s"] for path in PATHS}
    trainer = "trainer_packed" if cfg.packing else "trainer_grouped" if cfg.length_grouping > 1 else "trainer_padded"
    shared = {"paths": {p: out[p] for p in PATHS if p.startswith("chains")},
              **{k: details[k] for k in ("steps", "batch_size", "precision", "threads", "model")},
              **{f"ratio_g{g}": round(rate[f"chains{g}_on"] / rate[f"chains{g}_off"], 3) for g in GROUPS}}
    return [{"name": "sft_trainer_throughput", "figure": "SFT tokens/s, the trainer (Ray Train) / a plain torch loop",
             "ratio": round(rate[trainer] / rate["plain"], 3), "target": ">= 0.9",
             "details": {"paths": {"plain": out["plain"], "trainer": out[trainer]}, **details}},
            # padded rows train 1.2x the demo chains' tokens (batches of 16, 300 to 519 tokens each)
            {"name": "sft_packing", "figure": "SFT trainer tokens/s, packed rows / padded rows",
             "ratio": round(rate["trainer_packed"] / rate["trainer_padded"], 3), "target": ">= 1.1",
             "details": {"paths": {p: out[p] for p in ("trainer_padded", "trainer_packed")}, **details}},
            {"name": "sft_length_grouping", "figure": "SFT trainer tokens/s, length-grouped batches / shuffled ones",
             "ratio": round(rate["trainer_grouped"] / rate["trainer_padded"], 3), "target": ">= 1.1",
             "details": {"paths": {p: out[p] for p in ("trainer_padded", "trainer_grouped")}, **details}},
            {"name": "sft_shared_prompts",
             "figure": f"SFT trainer tokens/s on chains {GROUPS[0]} per question, each prompt once / with every chain",
             "ratio": shared[f"ratio_g{GROUPS[0]}"], "target": ">= 1.1", "details": shared}]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths, d = result["details"]["paths"], result["details"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(paths), [paths[p]["tokens_per_s"] for p in paths], color=["grey", "tab:blue"] * (len(paths) // 2))
    ax.set_ylabel("training tokens/s (no padding)")
    if result["name"] == "sft_shared_prompts":
        on = [v for p, v in paths.items() if p.endswith("_on")]
        ax.set_title(f"SFT, batch {d['batch_size']}, {d['precision']}, {d['threads']} threads\nchains of about "
                     f"{on[0]['tokens_mean']:.0f} tokens, {on[0]['prompt_tokens_mean']:.0f} of them prompt", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.set_title(f"SFT, batch {d['batch_size']}, {d['precision']}, {d['threads']} threads, "
                     f"{d['tokens_mean']:.0f} tokens per example, packing {d['packing']}, "
                     f"grouping {d['length_grouping']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    args = (Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    print(json.dumps(_plain(*args) if sys.argv[1] == "plain" else _trainer(*args, layout=sys.argv[1])))
