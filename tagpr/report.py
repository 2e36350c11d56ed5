"""The run report: per task, the official LaMP metric of the base, SFT and RL policies on dev, and
the average relative improvement over base (the paper's headline figure); plus its plots.

Inputs are plain dicts (evaluations from :func:`tagpr.evaluation.evaluate_policy`, the RL run's
``metrics.jsonl`` lines, the chains' tag counts), so the report is built and tested without Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tagpr.lamp.tasks import get_task

PHASES = ("base", "sft", "rl")


def relative_improvement(value: float, base: float, higher_is_better: bool) -> float | None:
    """(value - base) / |base|, sign-flipped for lower-is-better metrics (MAE, RMSE); None at base 0."""
    if base == 0:
        return None
    gain = (value - base) / abs(base)
    return gain if higher_is_better else -gain


def build_report(evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``evaluations`` maps phases (base, sft, rl; any subset, base first) to evaluations on the same
    dev questions. Per task the primary metric per phase and each phase's relative improvement over
    base; the average of those over tasks; and the dev task score, format validity and tag score."""
    phases = [p for p in PHASES if p in evaluations]
    if "base" not in phases:
        raise ValueError("the report compares against the base policy: its evaluation is missing")
    tasks = list(evaluations["base"]["tasks"])
    rows, improvements = [], {p: [] for p in phases if p != "base"}
    for name in tasks:
        task = get_task(name)
        metric = task.primary_metric
        values = {p: evaluations[p]["tasks"][name][metric] for p in phases}
        gains = {p: relative_improvement(values[p], values["base"], task.higher_is_better) for p in improvements}
        for p, g in gains.items():
            if g is not None:
                improvements[p].append(g)
        rows.append({"task": name, "metric": metric, "higher_is_better": task.higher_is_better,
                     "n": evaluations["base"]["tasks"][name]["n"], **values,
                     **{f"{p}_rel": g for p, g in gains.items()}})
    summary = {p: {"task_score": evaluations[p]["task_score"], "format_valid": evaluations[p]["format_valid"],
                   "tag_score": evaluations[p]["tag_score"]} for p in phases}
    for p, gains in improvements.items():
        summary[p]["avg_relative_improvement"] = sum(gains) / len(gains) if gains else None
        summary[p]["relative_improvement_tasks"] = len(gains)  # tasks where base scored above 0
    return {"phases": phases, "tasks": rows, "summary": summary}


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value + 0.0:+.1%}" if pct else f"{value:.3f}"  # + 0.0: no "-0.0%"


def render_markdown(report: dict[str, Any], title: str, notes: list[str] | None = None,
                    plots: list[str] | None = None) -> str:
    phases = report["phases"]
    rel = [p for p in phases if p != "base"]
    head = ["task", "metric", *phases, *(f"{p} vs base" for p in rel)]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["tasks"]:
        arrow = "" if r["higher_is_better"] else " (lower is better)"
        cells = [r["task"], r["metric"] + arrow, *(_fmt(r[p]) for p in phases),
                 *(_fmt(r.get(f"{p}_rel"), pct=True) for p in rel)]
        lines.append("| " + " | ".join(cells) + " |")
    s = report["summary"]
    covered = {p: s[p]["relative_improvement_tasks"] for p in rel}
    lines.append("| **average relative improvement over base** | | " + " | ".join("" for _ in phases) + " | "
                 + " | ".join(f"**{_fmt(s[p]['avg_relative_improvement'], pct=True)}** ({covered[p]} of "
                              f"{len(report['tasks'])} tasks)" for p in rel) + " |")
    lines += ["", "| | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for key, label in (("task_score", "dev task score"), ("format_valid", "format valid"), ("tag_score", "tag score")):
        lines.append(f"| {label} | " + " | ".join(_fmt(s[p][key]) for p in phases) + " |")
    if any(covered[p] < len(report["tasks"]) for p in rel):
        lines += ["", "Relative improvement is undefined where the base policy scores 0 (n/a); the average "
                      "covers the other tasks only, so compare the dev task scores above."]
    for note in notes or []:
        lines += ["", note]
    for plot in plots or []:
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    return "\n".join(lines) + "\n"


def read_metrics(path: Path, prefix: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in rows if r.get("prefix") == prefix]


def plot_report(report: dict[str, Any], learner: list[dict], rollout: list[dict], tag_counts: dict[str, int],
                out_dir: Path) -> list[str]:
    """Four PNGs into ``out_dir``; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = [m["step"] for m in learner]
    for key in sorted({k for m in learner for k in m if k.startswith("reward/")}):
        ax.plot(steps, [m.get(key) for m in learner], label=key.removeprefix("reward/"))
    ax.plot(steps, [m.get("reward_mean") for m in learner], "k--", label="stage reward")
    ax.set(xlabel="learner step", ylabel="mean reward", title="RL reward per component")
    ax.legend(fontsize=7, ncol=3)
    save(fig, "rewards.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(report["phases"])
    rows = report["tasks"]
    for i, phase in enumerate(report["phases"]):
        ax.bar([j + i * width for j in range(len(rows))], [r[phase] for r in rows], width, label=phase)
    ax.set_xticks([j + width * (len(report["phases"]) - 1) / 2 for j in range(len(rows))],
                  [f"{r['task']}\n{r['metric']}" for r in rows], fontsize=7)
    ax.set(title="dev metric per task (MAE/RMSE: lower is better)")
    ax.legend(fontsize=8)
    save(fig, "dev_metrics.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    tags = sorted(tag_counts, key=tag_counts.get, reverse=True)
    ax.bar(range(len(tags)), [tag_counts[t] for t in tags])
    ax.set_xticks(range(len(tags)), tags, rotation=30, ha="right", fontsize=7)
    ax.set(title="tags in the SFT chains", ylabel="steps")
    save(fig, "tags.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(steps, [m.get("staleness_mean") for m in learner], label="mean")
    a1.plot(steps, [m.get("staleness_max") for m in learner], label="max")
    a1.set(xlabel="learner step", ylabel="policy versions", title="staleness of consumed trajectories")
    a1.legend(fontsize=8)
    t0 = min((m["time"] for m in [*learner, *rollout]), default=0.0)
    a2.plot([m["time"] - t0 for m in learner], [m.get("trajectories_per_s") for m in learner],
            label="learner trajectories/s")
    a2.plot([m["time"] - t0 for m in rollout], [m.get("groups_per_s", 0) for m in rollout],
            label="rollout groups/s")
    a2.set(xlabel="seconds", title="throughput")
    a2.legend(fontsize=8)
    save(fig, "staleness_throughput.png")
    return names
