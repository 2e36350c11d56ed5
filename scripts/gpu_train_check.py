"""The training side's GPU check: the SFT loop and a GRPO step through the TrainStrategy that Ray Train
workers use (one worker, no Ray needed), on the worker's device. Writes one JSON (``--out``); exits
non-zero if a check fails.

    python scripts/gpu_train_check.py --out benchmarks/results/gpu_train_check.json [--model DIR]

- ``sft_fp32`` / ``sft_bf16``: SFT steps on direct-answer chains of the synthetic users (DDP strategy,
  bf16 autocast for the second): the parameters live on the device and the loss falls; steps/s and
  tokens/s, with the same fp32 steps on this host's CPU for a side-by-side ratio.
- ``rl_step``: one GRPO step on sampled trajectories with a frozen reference on the device; its
  loss statistics equal those of the same step on the CPU (fp32) and the update moves the weights.
- ``deepspeed_zero2``: the DeepSpeed strategy (ZeRO-2, one rank) where DeepSpeed is installed.
- ``learner_shared_prefix`` (tiny shape): the learner benchmark's row on the device
  (``benchmarks/bench_learner.py``): completion tokens/s of TagPR-shaped GRPO steps with each prompt
  run once against per sequence, and on a GPU the allocator's peak step memory; a measurement,
  it fails only when a path errors.

``--shape smollm2-135m`` runs the same on a random-init model of SmolLM2-135M's shape, so the
throughput figures are those of a real small model's size.

Runs on a CPU-only host too (every step on the CPU, the ratio 1 by construction).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _chains(n: int) -> list[dict]:
    from tagpr.config import SyntheticConfig
    from tagpr.lamp.synthetic import GENERATORS, generate_split

    cfg = SyntheticConfig(users={"train": 8}, questions_per_user=2)
    out = []
    for task in GENERATORS.names():
        split = generate_split(task, 0, 8, cfg)
        for q in split.questions:
            out.append({"task": task, "input": q["input"], "profile": q["profile"],
                        "response": f"<examine_examples>{q['profile'][0]}</examine_examples>"
                                    f"<answer>{split.golds[q['id']]}</answer>"})
    return out[:n]


def _sft(model, data, pad_id: int, precision: str, steps: int, batch: int, device: torch.device) -> dict:
    from actors.train_strategy import DDPStrategy
    from tagpr.config import SFTConfig
    from tagpr.sft.train import batches

    cfg = SFTConfig(precision=precision, lr=1e-3, warmup_steps=0, batch_size=batch)
    strategy = DDPStrategy(model, cfg, cfg.lr, 0.0, batch, world=1, device=device)
    order = torch.arange(len(data)).repeat(steps * batch // len(data) + 1)[: steps * batch]
    losses, tokens = [], 0
    start = None
    for i, (b, n_tokens) in enumerate(batches(data, batch, order, pad_id)):
        if i == 1:  # the first step pays for kernel selection and allocation
            _sync(device)
            start = time.perf_counter()
        loss = strategy.forward(**b).loss
        strategy.step(loss)
        losses.append(loss.item())
        tokens += n_tokens if i else 0
    _sync(device)
    seconds = time.perf_counter() - start
    on_device = {p.device.type for p in model.parameters()} == {device.type}
    return {"device": str(device), "precision": precision, "steps": len(losses), "first_loss": losses[0],
            "last_loss": losses[-1], "steps_per_s": (len(losses) - 1) / seconds, "tokens_per_s": tokens / seconds,
            "params_on_device": on_device, "ok": on_device and losses[-1] < 0.8 * losses[0]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rl_rows(model, tokenizer, device: torch.device, prompts: list[str], n: int):
    """Sampled trajectories with their own logprobs (on-policy) and made-up rewards; rows for one step."""
    from tagpr.config import RLConfig
    from tagpr.rl.batch import rows_from_groups
    from tagpr.rl.trajectory import Group, PromptRef, Trajectory

    groups = []
    torch.manual_seed(0)
    for gi, text in enumerate(prompts):
        ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, max_new_tokens=24, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
        trajs = []
        for k in range(n):
            toks = out.sequences[k, ids.shape[1]:].tolist()
            lps = [float(torch.log_softmax(s[k].float(), -1)[t]) for s, t in zip(out.logits, toks)]
            ref = PromptRef(0, f"p{gi}")
            trajs.append(Trajectory(ref, ids[0].tolist(), toks, lps, "", {"format_task": float(k % 3)},
                                    0, "check"))
        groups.append(Group(PromptRef(0, f"p{gi}"), trajs, 0, "check"))
    return rows_from_groups(groups, {"format_task": 1.0}, RLConfig(kl_coef=0.05))[0]


class _Stepper:
    """The RL stepper protocol over a policy (scored as the learner scores it) and AdamW, on a chosen device."""

    def __init__(self, module, device: torch.device):
        from tagpr.rl.forward import response_lm

        self.module, self.device = response_lm(module.to(device), "auto"), device
        self.opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def forward(self, **batch):
        return self.module(**batch)

    def backward(self, loss, last=True):
        loss.backward()

    def optimizer_step(self):
        self.opt.step()
        self.opt.zero_grad()


def _rl(model, tokenizer, device: torch.device) -> dict:
    from tagpr.config import RLConfig
    from tagpr.rl.batch import MicroBatching
    from tagpr.rl.forward import ResponseLM
    from tagpr.rl.learn import LOSS_STATS, train_step

    cfg = RLConfig(kl_coef=0.05)
    prompts = ["<|im_start|>user\nWhich tag fits a film about a starship crew?<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nRate this blender review: works well.<|im_end|>\n<|im_start|>assistant\n"]
    results = {}
    rows = None
    for dev in (device, torch.device("cpu")):
        m = copy.deepcopy(model).to(dev).float()
        rows = rows or _rl_rows(m, tokenizer, dev, prompts, 8)
        reference = ResponseLM(copy.deepcopy(m).eval().requires_grad_(False), shared_prefix=False)
        before = [p.detach().clone() for p in m.parameters()]
        start = time.perf_counter()
        sums = train_step(_Stepper(m, dev), rows, cfg, MicroBatching(grad_accum=2), pad_id=tokenizer.pad_token_id,
                          reference=reference)
        _sync(dev)
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(m.parameters(), before))
        results[dev.type] = {"stats": dict(zip(LOSS_STATS, (sums[:-1] / sums[-1]).tolist())), "tokens": int(sums[-1]),
                             "seconds": time.perf_counter() - start, "max_weight_change": moved}
    dev_stats, cpu_stats = results[device.type]["stats"], results["cpu"]["stats"]
    gap = max(abs(dev_stats[k] - cpu_stats[k]) for k in dev_stats)
    ok = gap < 1e-3 and results[device.type]["max_weight_change"] > 0
    return {"rows": len(rows), "device": results[device.type], "cpu": results["cpu"], "max_stat_gap_vs_cpu": gap,
            "ok": ok}


def _deepspeed(model, data, pad_id: int, device: torch.device) -> dict:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "DeepSpeed is not installed", "ok": True}
    import torch.distributed as dist

    from actors.train_strategy import DeepSpeedStrategy
    from tagpr.config import SFTConfig
    from tagpr.sft.train import batches

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    cfg = SFTConfig(strategy="deepspeed", zero_stage=2, precision="bf16" if device.type == "cuda" else "fp32",
                    lr=1e-3, warmup_steps=0, batch_size=8)
    strategy = DeepSpeedStrategy(model, cfg, cfg.lr, 0.0, 8, world=1)
    losses = []
    order = torch.arange(len(data)).repeat(2)[:80]
    for b, _ in batches(data, 8, order, pad_id):
        loss = strategy.forward(**b).loss
        strategy.step(loss)
        losses.append(loss.item())
    with tempfile.TemporaryDirectory() as tmp:
        strategy.save_state(Path(tmp), 0)
        saved = any(Path(tmp).rglob("*.pt"))
    return {"device": str(strategy.device), "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
            "state_saved": saved, "ok": saved and losses[-1] < 0.8 * losses[0]}


def _learner(device: torch.device) -> dict:
    from benchmarks import bench_learner

    with tempfile.TemporaryDirectory() as tmp:
        policy = bench_learner.setup(Path(tmp))
        paths = {mode: bench_learner.measure(str(policy), str(Path(tmp) / "rows.json"), mode, str(device))
                 for mode in ("per_sequence", "shared")}
    out = {"paths": paths, "speedup": paths["shared"]["tokens_per_s"] / paths["per_sequence"]["tokens_per_s"],
           "ok": True}
    if device.type == "cuda":  # on the CPU the peak is the process's, shared by both paths here
        out["memory_ratio"] = paths["shared"]["peak_step_mib"] / max(paths["per_sequence"]["peak_step_mib"], 1e-9)
    return out


def _timed_steps(text: str) -> int:
    """An SFT step count: the first step is not timed, so at least two."""
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 2 (the first step is not timed)")
    return int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_train_check.json")
    parser.add_argument("--model", help="HF folder (default: build the embedded tiny policy)")
    parser.add_argument("--shape", choices=["tiny", "smollm2-135m"], default="tiny",
                        help="smollm2-135m: a random-init Llama of SmolLM2-135M's shape on the tiny tokenizer, "
                             "for throughput at a real small model's size")
    parser.add_argument("--steps", type=_timed_steps, default=40, help="SFT steps on the device (the first untimed)")
    parser.add_argument("--cpu-steps", type=_timed_steps, default=6, help="the same on the CPU, for the ratio")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.train_strategy import training_device
    from tagpr.config import load_config
    from tagpr.models import build_tiny_policy
    from tagpr.sft.data import tokenize_chains
    from tagpr.tags import TagSet

    device = training_device()
    report: dict = {"host": platform.node(), "torch": torch.__version__, "device": str(device),
                    "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "checks": {}}
    cfg = load_config(None)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(build_tiny_policy(cfg.model, cfg.tags, Path(tmp) / "policy"))
        tokenizer = AutoTokenizer.from_pretrained(path)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if args.shape == "smollm2-135m":
            from transformers import LlamaConfig, LlamaForCausalLM

            torch.manual_seed(0)
            base = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True))
        report.update(shape=args.shape, parameters=sum(p.numel() for p in base.parameters()))
        data = tokenize_chains(_chains(160), tokenizer, TagSet(cfg.tags), 4, 1024)
        checks = report["checks"]
        steps = [
            ("sft_fp32", lambda: _sft(copy.deepcopy(base), data, pad, "fp32", args.steps, args.batch, device)),
            ("sft_bf16", lambda: _sft(copy.deepcopy(base), data, pad, "bf16", args.steps, args.batch, device)),
            ("sft_fp32_cpu", lambda: _sft(copy.deepcopy(base), data, pad, "fp32", args.cpu_steps, args.batch,
                                          torch.device("cpu"))),
            ("rl_step", lambda: _rl(base, tokenizer, device)),
            ("deepspeed_zero2", lambda: _deepspeed(copy.deepcopy(base), data, pad, device)),
        ]
        if args.shape == "tiny":
            steps.append(("learner_shared_prefix", lambda: _learner(device)))
        for name, run in steps:
            t0 = time.perf_counter()
            try:
                checks[name] = run()
            except Exception as exc:  # recorded, and the remaining checks still run
                checks[name] = {"error": f"{type(exc).__name__}: {exc}", "ok": False}
            checks[name]["seconds"] = round(time.perf_counter() - t0, 2)
            print(name, json.dumps(checks[name]), flush=True)
        cpu = checks["sft_fp32_cpu"].get("steps_per_s")
        if cpu and checks["sft_fp32"].get("steps_per_s"):
            report["sft_fp32_speedup_vs_cpu"] = checks["sft_fp32"]["steps_per_s"] / cpu
    report["ok"] = all(c.get("ok") for c in report["checks"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "checks"}, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
