"""Run every ``benchmarks/bench_*.py``; write ``results/<name>.json``, ``<name>.png``, ``summary.md``.

A benchmark module defines ``run()`` returning a result dict (or a list of them) with at least
``name``, ``figure`` (what the ratio means), ``ratio``, ``target`` (a comparison such as
``"<= 0.25"``) and ``details``, and ``plot(result, path)``. Ratios are measured side by side in
one run, so machine noise cancels as far as it can; absolute times stay in ``details`` as context.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import operator
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def meets(ratio: float, target: str) -> bool:
    op, value = target.split()
    return _OPS[op](ratio, float(value))


def machine() -> str:
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def record(name: str, figure: str, details: dict) -> Path:
    """Write a measurement that is not a ``make bench`` ratio (no target) to ``results/<name>.json``."""
    result = {"name": name, "figure": figure, "details": details, "machine": machine(),
              "date": dt.date.today().isoformat()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def _update_readme(table: str) -> None:
    """Replace the table between the README's bench markers with the current summary."""
    readme = HERE.parent / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark names (default: all)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    known = {p.stem.removeprefix("bench_"): p.stem for p in sorted(HERE.glob("bench_*.py"))}
    if unknown := sorted(set(args.names) - set(known)):
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    modules = [m for name, m in known.items() if not args.names or name in args.names]
    rows = []
    for mod_name in modules:
        mod = importlib.import_module(f"benchmarks.{mod_name}")
        print(f"running {mod_name} ...", flush=True)
        results = mod.run()
        for result in results if isinstance(results, list) else [results]:
            result.update(machine=machine(), date=dt.date.today().isoformat(),
                          met=meets(result["ratio"], result["target"]))
            (RESULTS / f"{result['name']}.json").write_text(json.dumps(result, indent=1))
            mod.plot(result, RESULTS / f"{result['name']}.png")
            rows.append(result)
            print(f"  {result['figure']}: {result['ratio']:.3f} (target {result['target']})", flush=True)
    table = ["| benchmark | figure | ratio | target | met | machine | date |", "|---|---|---|---|---|---|---|"]
    for name in sorted(p.stem for p in RESULTS.glob("*.json")):
        r = json.loads((RESULTS / f"{name}.json").read_text())
        if "ratio" not in r:  # another record kept beside the benchmarks (gpu_check.json)
            continue
        table.append(f"| {r['name']} | {r['figure']} | {r['ratio']:.3f} | {r['target']} | "
                     f"{'yes' if r['met'] else 'no'} | {r['machine']} | {r['date']} |")
    (RESULTS / "summary.md").write_text("\n".join(table) + "\n")
    _update_readme("\n".join(table))
    print("\n".join(table))
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
