"""RL learning curve on the synthetic users: reward per component over steps and dev metrics at
checkpoints, from the SFT policy, for both stages; JSON and PNG in ``benchmarks/results/``.

    python -m benchmarks.learning_curve --policy <SFT policy dir> --prmu <PRMU checkpoint> \\
        [--steps 16,16] [--eval-every 16] [--limit 32] [--set KEY=VALUE ...]

RL settings (``--set`` wins over them): 8 prompts x 8 samples per step, lr 1e-4, and a small KL to
the SFT policy (0.05), without which the exploratory stage (no tag or PRMU term) lost the guided
stage's gain on this tiny policy. About 30 minutes on 2 cores.

The figure is the dev task score (the mean over tasks of accuracy, 1 - MAE/4 and ROUGE-1) after RL
over the same score of the starting policy, on the same questions, greedy decoding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from benchmarks.run import RESULTS, machine, meets

RL_SETTINGS = ["rl.prompts_per_step=8", "rl.lr=1e-4", "rl.kl_coef=0.05"]


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for state in (run_dir / "checkpoints").glob("step-*/trainer_state.json"):
        out.append((json.loads(state.read_text())["step"], state.parent))
    return sorted(out)


def _dev(evaluation: dict) -> dict:
    return {"task_score": evaluation["task_score"], "format_valid": evaluation["format_valid"],
            "tag_score": evaluation["tag_score"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--policy", required=True, help="the SFT policy (HF folder)")
    parser.add_argument("--prmu", required=True, help="PRMU checkpoint for the guided stage's reward")
    parser.add_argument("--steps", default="16,16", help="guided,exploratory steps")
    parser.add_argument("--eval-every", type=int, default=16)
    parser.add_argument("--limit", type=int, default=32, help="dev questions per task")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    args.overrides = [*RL_SETTINGS, *args.overrides]

    import ray

    from actors.checkpoints import export_hf
    from actors.controller import _remote_evaluate
    from tagpr.config import load_config
    from tagpr.jobs.rl import train

    guided, exploratory = (int(x) for x in args.steps.split(","))
    cfg = load_config(args.config, [
        f"model.policy={args.policy}", f"prmu.checkpoint={args.prmu}", f"rl.eval_limit={args.limit}",
        f"learner.checkpoint_every={args.eval_every}", "learner.keep_checkpoints=1000",
        f"rl.stages=[{{name: guided, steps: {guided}, weights: {{format_task: 1.0, tag: 0.2, prmu: 0.3}}}}, "
        f"{{name: exploratory, steps: {exploratory}, weights: {{format_task: 1.0}}}}]",
        *args.overrides])
    start = time.perf_counter()
    report = train(cfg)
    run_dir = Path(report["run_dir"])
    evaluations = report["evaluations"]
    dev = {0: _dev(evaluations["start"])}
    stage_end = {s["step"]: name for name, s in report["stages"].items()}
    for step, ckpt in _checkpoints(run_dir):
        if step in stage_end:
            dev[step] = _dev(evaluations[stage_end[step]])
            continue
        policy = export_hf(ckpt, run_dir / "curve" / f"step-{step}")
        result = ray.get(_remote_evaluate().remote(str(policy.resolve()), cfg.model_dump(mode="json"), args.limit))
        dev[step] = _dev(result)
        print(f"step {step}: dev task score {dev[step]['task_score']:.3f}", flush=True)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if m["prefix"] == "learner"]
    rewards = [{k: v for k, v in m.items() if k == "step" or k == "stage" or k.startswith("reward")} for m in steps]
    first, last = dev[0]["task_score"], dev[max(dev)]["task_score"]
    result = {
        "name": "learning_curve", "figure": "dev task score after RL / SFT starting policy",
        "ratio": round(last / first, 4), "target": "> 1",
        "details": {"dev": {str(k): v for k, v in sorted(dev.items())}, "rewards": rewards,
                    "improvement": round(last - first, 4), "best_improvement": round(max(
                        v["task_score"] for v in dev.values()) - first, 4), "questions_per_task": args.limit,
                    "steps": args.steps, "eval_every": args.eval_every, "overrides": args.overrides,
                    "policy": args.policy, "run_dir": str(run_dir), "seconds": round(time.perf_counter() - start),
                    "final_per_task": evaluations[list(report["stages"])[-1]]["tasks"],
                    "start_per_task": evaluations["start"]["tasks"]},
    }
    result.update(machine=machine(), date=dt.date.today().isoformat(), met=meets(result["ratio"], result["target"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learning_curve.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "learning_curve.png")
    print(f"dev task score {first:.3f} -> {last:.3f} ({result['ratio']:.3f}x)")
    return 0 if result["met"] else 1


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result["details"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["step"] for r in d["rewards"]]
    keys = {k for r in d["rewards"] for k in r if k.startswith("reward") and not k.endswith("_raw")}
    for key in sorted(keys - {"reward_std"}):  # the raw PRMU logit is on another scale
        ax1.plot(xs, [r.get(key, float("nan")) for r in d["rewards"]], label=key)
    ax1.set_xlabel("learner step")
    ax1.set_title("training reward (per component)")
    ax1.legend(fontsize=7)
    steps = sorted(int(k) for k in d["dev"])
    for key in ("task_score", "format_valid", "tag_score"):
        ax2.plot(steps, [d["dev"][str(s)][key] for s in steps], marker="o", label=key)
    ax2.set_xlabel("learner step")
    ax2.set_title(f"dev ({d['questions_per_task']} questions per task)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
