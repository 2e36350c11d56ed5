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
from tagpr.errors import TagPRError
from tagpr.jobs import command
from tagpr.rl.result import RLResult


def train(cfg: TagPRConfig, log: Callable[[str], None] = print, run_dir: Path | None = None,
          resume: str | Path | None = None, start_evaluation: dict | None = None) -> RLResult:
    """Run every stage into ``run_dir`` (a new one by default), or continue ``resume`` (a run directory);
    ``start_evaluation``: the starting policy's dev scores where already known (no second scoring)."""
    from actors.controller import RLController

    run_dir = _run_dir(cfg, run_dir, resume)
    if resume:
        write_resolved(cfg, run_dir, resumed=True)
    log(f"rl: run directory {run_dir}")
    return RLController(cfg, run_dir, log).run(resume=bool(resume), start_evaluation=start_evaluation)


def _run_dir(cfg: TagPRConfig, run_dir: Path | None, resume: str | Path | None) -> Path:
    """``resume`` (which must exist), else ``run_dir``, else a new run directory."""
    if resume:
        if not Path(resume).is_dir():
            raise TagPRError(f"--resume: {resume} is not a run directory")
        return Path(resume)
    return run_dir or new_run_dir(cfg, "rl")


def cmd_train(args: argparse.Namespace) -> int:
    cfg = command.load(args)
    run_dir = _run_dir(cfg, None, args.resume)
    with command.job_console(args, run_dir / "logs") as logs:
        out = logs.console
        report = train(cfg, log=out.print, run_dir=run_dir, resume=args.resume)
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
