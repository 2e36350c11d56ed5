"""The run report: per task, the official LaMP metric of the untrained base, the direct-answer
reference, the SFT and the RL policies on the same dev questions; the headline figure, RL's
average relative improvement over the reference (the paper compares against a base model that
can answer, which the untrained base here cannot); paired-bootstrap intervals of RL against SFT
and against the reference; and plots.

Inputs are plain dicts (evaluations from :func:`tagpr.evaluation.evaluate_policy`, the RL run's
``metrics.jsonl`` lines, the chains' tag counts), so the report is built and tested without Ray.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tagpr.evaluation import primary_score
from tagpr.lamp.tasks import get_task
from tagpr.stats import LEVEL, RESAMPLES, paired_bootstrap, stratified_paired_bootstrap

PHASES = ("base", "reference", "sft", "rl")
REFERENCE = "reference"
RELATIVE = ("sft", "rl")  # phases whose relative improvement over the reference is reported
COMPARISONS = (("rl", "sft"), ("rl", "reference"))  # (policy, against): paired intervals of policy - against
HEADLINE = "RL vs direct-answer reference"
ONE_ANSWER = 0.9  # a policy giving one answer to this share of a task's questions does not read them
PRIMARY_LABEL = "primary score (accuracy; LaMP_3: 1 - MAE/4; ROUGE-1)"


def relative_improvement(value: float, base: float, higher_is_better: bool) -> float | None:
    """(value - base) / |base|, sign-flipped for lower-is-better metrics (MAE, RMSE); None at base 0."""
    if base == 0:
        return None
    gain = (value - base) / abs(base)
    return gain if higher_is_better else -gain


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_report(evaluations: dict[str, dict[str, Any]], resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """``evaluations`` maps phases (any of base, reference, sft, rl) to evaluations of the same dev
    questions. Per task each phase's official primary metric and primary score (0-1) and the
    relative improvement of SFT and RL over the reference; their averages over tasks (RL's is the
    headline); paired-bootstrap intervals per task and for the dev task score (where both phases
    kept per-question scores); and per phase the dev task score and format validity."""
    phases = [p for p in PHASES if p in evaluations]
    if not phases:
        raise ValueError(f"no evaluations to report; expected some of {PHASES}")
    tasks = list(evaluations[phases[0]]["tasks"])
    for p in phases:
        if list(evaluations[p]["tasks"]) != tasks:
            raise ValueError(f"{p} was scored on tasks {list(evaluations[p]['tasks'])}, {phases[0]} on {tasks}")
    has_ref = REFERENCE in phases
    rel_phases = [p for p in RELATIVE if p in phases and has_ref]
    rows = []
    for name in tasks:
        task = get_task(name)
        scored = {p: evaluations[p]["tasks"][name] for p in phases}
        values = {p: s[task.primary_metric] for p, s in scored.items()}
        rows.append({"task": name, "metric": task.primary_metric, "higher_is_better": task.higher_is_better,
                     "n": scored[phases[0]]["n"], "values": values,
                     "scores": {p: primary_score(s) for p, s in scored.items()},
                     "relative": {p: relative_improvement(values[p], values[REFERENCE], task.higher_is_better)
                                  for p in rel_phases}})
    relative = {}
    for p in rel_phases:
        gains = [r["relative"][p] for r in rows if r["relative"][p] is not None]
        relative[p] = {"average": _mean(gains), "tasks": len(gains)}  # tasks where the reference scored above 0
    headline = ({"label": HEADLINE, "average": relative["rl"]["average"], "tasks": relative["rl"]["tasks"],
                 "of": len(tasks)} if "rl" in relative else None)
    summary = {p: {"task_score": evaluations[p]["task_score"], "format_valid": evaluations[p]["format_valid"],
                   "sampled_format_valid": evaluations[p].get("sampled_format_valid"),
                   "tag_score": evaluations[p]["tag_score"]} for p in phases}
    one_answer = [{"policy": p, "task": name, "answer": scored["top_answer"], "share": scored["top_answer_share"],
                   "n": scored["n"]}
                  for p in phases for name, scored in evaluations[p]["tasks"].items()
                  if scored.get("top_answer") and scored["top_answer_share"] >= ONE_ANSWER and scored["n"] > 1]
    return {"phases": phases, "tasks": rows, "headline": headline, "relative": relative,
            "comparisons": _comparisons(evaluations, phases, tasks, resamples, seed), "summary": summary,
            "one_answer": one_answer, "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL}}


def _comparisons(evaluations: dict[str, dict[str, Any]], phases: list[str], tasks: list[str], resamples: int,
                 seed: int) -> dict[str, Any]:
    """``{policy}_vs_{against}``: per task and for the dev task score, the paired-bootstrap interval of
    policy minus against in primary score, for each pair whose both evaluations kept per-question scores."""
    out = {}
    for a, b in COMPARISONS:
        if a not in phases or b not in phases:
            continue
        per_q = {p: {t: evaluations[p]["tasks"][t].get("per_question") for t in tasks} for p in (a, b)}
        if not all(per_q[p][t] for p in (a, b) for t in tasks):
            continue
        out[f"{a}_vs_{b}"] = {
            "policy": a, "against": b,
            "tasks": {t: asdict(paired_bootstrap(per_q[a][t], per_q[b][t], resamples, seed)) for t in tasks},
            "task_score": asdict(stratified_paired_bootstrap(per_q[a], per_q[b], resamples, seed))}
    return out


def _fmt(value: float | None, pct: bool = False, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    if pct:
        return f"{value + 0.0:+.1%}"  # + 0.0: no "-0.0%"
    return f"{value + 0.0:+.3f}" if sign else f"{value:.3f}"


def _interval(i: dict[str, Any]) -> str:
    return f"{_fmt(i['estimate'], sign=True)} [{_fmt(i['low'], sign=True)}, {_fmt(i['high'], sign=True)}]"


def serving_commands(config: str, policy: str, profiles: str, user: str, question: str, model: str) -> list[str]:
    """The command that serves ``policy`` with the run's ``config`` (so the prompt is the one it
    was trained on) and the users of ``profiles``, and one request asking it for ``user``
    (docs/serving.md)."""
    body = json.dumps({"model": model, "user": user, "messages": [{"role": "user", "content": question}]})
    return [f"tagpr serve policy --config {shlex.quote(config)} --policy {shlex.quote(policy)} "
            f"--profiles {shlex.quote(profiles)}",
            f"curl -s 127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' -d {shlex.quote(body)}"]


def serving_section(commands: list[str]) -> str:
    """The report's last section: :func:`serving_commands` in a shell block."""
    return "\n".join(["## Ask the trained policy", "", "Serve it with every user's profile from the data, then ask "
                      "it for one of them (docs/serving.md):", "", "```bash", *commands, "```", ""])


def render_markdown(report: dict[str, Any], title: str, notes: list[str] | None = None,
                    plots: list[str] | None = None) -> str:
    phases, rows, s = report["phases"], report["tasks"], report["summary"]
    relative, head = report["relative"], report["headline"]
    lines = [f"# {title}", ""]
    if head is None:
        lines.append("No headline figure: it compares RL with the direct-answer reference, and this run has "
                     f"{'no RL policy' if 'rl' not in phases else 'no reference (add the `reference` step)'}.")
    else:
        lines.append(f"**{head['label']}: average relative improvement {_fmt(head['average'], pct=True)}** over "
                     f"{head['tasks']} of {head['of']} tasks (the paper's headline figure: per task (RL - "
                     "reference) / reference on the official metric, sign-flipped for MAE, averaged over tasks).")
    cols = ["task", "metric", "n", *phases, *(f"{p} vs reference" for p in relative)]
    lines += ["", "## Official metrics on dev", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        arrow = "" if r["higher_is_better"] else " (lower is better)"
        cells = [r["task"], r["metric"] + arrow, str(r["n"]), *(_fmt(r["values"][p]) for p in phases),
                 *(_fmt(r["relative"][p], pct=True) for p in relative)]
        lines.append("| " + " | ".join(cells) + " |")
    if relative:
        lines.append("| **average relative improvement over the reference** | | |" + " |" * len(phases) + " "
                     + " | ".join(f"**{_fmt(v['average'], pct=True)}** ({v['tasks']} of {len(rows)} tasks)"
                                  for v in relative.values()) + " |")
        if any(v["tasks"] < len(rows) for v in relative.values()):
            lines += ["", "Relative improvement is undefined where the reference scores 0 (n/a); the average covers "
                          "the other tasks only, so compare the dev task scores and the intervals below."]
    comps = report["comparisons"]
    if comps:
        b = report["bootstrap"]
        labels = [f"{c['policy']} - {c['against']}" for c in comps.values()]
        lines += ["", "## Paired differences", "",
                  f"Difference in {PRIMARY_LABEL} on the same questions: mean [{b['level']:.0%} paired-bootstrap "
                  f"interval], {b['resamples']} resamples of the questions (within each task for the dev task "
                  "score); n is the questions per task.", "",
                  "| task | n | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for r in rows:
            lines.append(f"| {r['task']} | {r['n']} | "
                         + " | ".join(_interval(c["tasks"][r["task"]]) for c in comps.values()) + " |")
        first = next(iter(comps.values()))["task_score"]
        lines.append(f"| **dev task score** | {first['n']} per task | "
                     + " | ".join(f"**{_interval(c['task_score'])}**" for c in comps.values()) + " |")
    lines += ["", "## Per policy", "", "| | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for key, label in (("task_score", "dev task score"), ("format_valid", "format valid (greedy)"),
                       ("sampled_format_valid", "format valid (sampled)"), ("tag_score", "tag score")):
        lines.append(f"| {label} | " + " | ".join(_fmt(s[p][key]) for p in phases) + " |")
    if report.get("one_answer"):
        lines += ["", "## One answer for every question", "",
                  f"Where a policy gives the same answer to at least {ONE_ANSWER:.0%} of a task's questions, its "
                  "score there is that answer's share among the golds, not a reading of the input or the user; "
                  "a change between policies on such a task is a change of the one answer.", "",
                  "| policy | task | answer | share of questions |", "|---|---|---|---|"]
        lines += [f"| {o['policy']} | {o['task']} | `{o['answer'][:60]}` | {o['share']:.2f} of {o['n']} |"
                  for o in report["one_answer"]]
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


def prmu_distribution(learner: list[dict[str, Any]]) -> dict[str, Any] | None:
    """R_PRMU over every response the PRMU scored in RL: raw scores and the calibrated reward, with
    quantiles and the fraction within 0.02 of 0 or 1 (how far the reward saturates)."""
    raw = [v for m in learner for v in m.get("prmu_scores", {}).get("raw", [])]
    cal = [v for m in learner for v in m.get("prmu_scores", {}).get("calibrated", [])]
    if not raw:
        return None

    def quantiles(values: list[float]) -> dict[str, float]:
        v = sorted(values)
        return {f"p{q}": v[min(len(v) - 1, int(q / 100 * len(v)))] for q in (5, 50, 95)}

    return {"n": len(raw), "raw": raw, "calibrated": cal, "raw_quantiles": quantiles(raw),
            "calibrated_quantiles": quantiles(cal),
            "saturated_frac": sum(c < 0.02 or c > 0.98 for c in cal) / len(cal)}


def prmu_note(dist: dict[str, Any]) -> str:
    r, c = dist["raw_quantiles"], dist["calibrated_quantiles"]
    return (f"R_PRMU over the {dist['n']} RL responses the PRMU scored: raw score p5/p50/p95 "
            f"{r['p5']:.2f} / {r['p50']:.2f} / {r['p95']:.2f}, calibrated reward {c['p5']:.3f} / {c['p50']:.3f} / "
            f"{c['p95']:.3f}; {dist['saturated_frac']:.0%} within 0.02 of 0 or 1 (`prmu_scores.png`).")


def plot_dev(report: dict[str, Any], path: Path) -> None:
    """One figure: each policy's primary score per task on one 0-1 scale; RL minus SFT and minus the
    reference with their intervals as error bars; greedy and sampled format validity per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases, rows, comps = report["phases"], report["tasks"], report["comparisons"]
    names = [r["task"] + ("\n1-MAE/4" if r["metric"] == "mae" else "") for r in rows] + ["task\nscore"]
    fig = plt.figure(figsize=(11, 7.5))
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / len(phases)
    for i, p in enumerate(phases):
        values = [r["scores"][p] for r in rows] + [report["summary"][p]["task_score"]]
        ax.bar([j + (i - (len(phases) - 1) / 2) * width for j in range(len(names))], values, width, label=p)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="primary score",
           title=f"dev {PRIMARY_LABEL}, n = {rows[0]['n'] if rows else 0} questions per task")
    ax.axvline(len(rows) - 0.5, color="grey", lw=0.5)
    ax.legend(fontsize=8, ncol=len(phases))

    ax = fig.add_subplot(grid[1, :2])
    offset = 0.3 / max(len(comps), 1)
    for k, c in enumerate(comps.values()):
        cells = [c["tasks"][r["task"]] for r in rows] + [c["task_score"]]
        x = [j + (k - (len(comps) - 1) / 2) * offset for j in range(len(names))]
        est = [i["estimate"] for i in cells]
        err = [[i["estimate"] - i["low"] for i in cells], [i["high"] - i["estimate"] for i in cells]]
        ax.errorbar(x, est, yerr=err, fmt="o", capsize=3, label=f"{c['policy']} - {c['against']}")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(len(rows) - 0.5, color="grey", lw=0.5)
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_xlim(-0.5, len(names) - 0.5)
    level, n = report["bootstrap"]["level"], rows[0]["n"] if rows else 0
    ax.set(ylabel="difference in primary score", title=f"paired difference, {level:.0%} bootstrap interval, "
           f"n = {n} per task" + ("" if comps else " (no pair to compare)"))
    if comps:
        ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[1, 2])
    for i, (key, label) in enumerate((("format_valid", "greedy"), ("sampled_format_valid", "sampled"))):
        values = [report["summary"][p][key] for p in phases]
        ax.bar([j + (i - 0.5) * 0.4 for j in range(len(phases))], [v or 0.0 for v in values], 0.4, label=label)
    ax.set_xticks(range(len(phases)), phases, fontsize=8)
    ax.set(ylim=(0, 1.25), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0], title="format valid")
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_report(report: dict[str, Any], learner: list[dict], rollout: list[dict], tag_counts: dict[str, int],
                prmu: dict[str, Any] | None, out_dir: Path) -> list[str]:
    """The PNGs into ``out_dir``, the PRMU score histogram only when RL scored with it (``prmu``: its
    :func:`prmu_distribution`, which the report's notes quote too); their file names."""
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

    plot_dev(report, out_dir / "dev_metrics.png")
    names.append("dev_metrics.png")

    if prmu:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
        a1.hist(prmu["raw"], bins=30)
        a1.set(xlabel="raw PRMU score", ylabel="responses", title="PRMU raw score")
        a2.hist(prmu["calibrated"], bins=20, range=(0, 1))
        a2.set(xlabel="R_PRMU", title="reward after `reward.prmu_transform`")
        save(fig, "prmu_scores.png")

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
