"""RL job: multi-stage asynchronous GRPO (guided, then exploratory) from the SFT policy.

    python -m tagpr.jobs.rl [--config C] [--set k=v] [--resume RUN_DIR]      (also `tagpr rl`)

Under ``ray job submit`` it joins the cluster it was submitted to (``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from tagpr.config import TagPRConfig, new_run_dir, write_resolved
from tagpr.jobs import command
from tagpr.rl.result import RLResult


def train(cfg: TagPRConfig, log: Callable[[str], None] = print, run_dir: Path | None = None,
          resume: str | Path | None = None, start_evaluation: dict | None = None) -> RLResult:
    """Run every stage into ``run_dir`` (a new one by default), or continue ``resume`` (a run directory);
    ``start_evaluation``: the starting policy's dev scores where already known (no second scoring)."""
    from actors.controller import RLController
    from tagpr.errors import TagPRError

    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise TagPRError(f"--resume: {run_dir} is not a run directory")
        write_resolved(cfg, run_dir, resumed=True)
    else:
        run_dir = run_dir or new_run_dir(cfg, "rl")
    log(f"rl: run directory {run_dir}")
    return RLController(cfg, run_dir, log).run(resume=bool(resume), start_evaluation=start_evaluation)


def cmd_train(args: argparse.Namespace) -> int:
    out = command.console()
    report = train(command.load(args), log=out.print, resume=args.resume)
    for name, stage in report.stages.items():
        out.print(f"stage {name}: {stage.stage_step} steps (version {stage.step}) in {stage.seconds}s")
    for name, r in report.evaluations.items():
        out.print(f"dev at {name}: format valid {r['format_valid']:.3f}, tag score {r['tag_score']:.3f}, "
                  f"task score {r['task_score']:.3f}")
    out.print(f"run {report.run_dir} ({report.seconds}s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command.main(argv, prefix=["rl"])


if __name__ == "__main__":
    sys.exit(main())
