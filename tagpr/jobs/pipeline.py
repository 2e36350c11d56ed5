"""The main job as a Ray job: the steps in ``run.steps`` (data, model, chains, sft, prmu, rl, ...).

    python -m tagpr.jobs.pipeline [CONFIG] [--set k=v] [--steps a,b]      (also `tagpr run`)

Under ``ray job submit`` it joins the cluster it was submitted to (``RAY_ADDRESS``).
"""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from tagpr.cli import main as cli_main

    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
