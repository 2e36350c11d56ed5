#!/usr/bin/env bash
# The demo pipeline on one GPU (at most 8 minutes on an H100): synthetic users, a real small model
# (SmolLM2-135M from a local folder, `make smollm2`), PRMU, chains, SFT, RL with CUDA vLLM rollout,
# the report. Records generation tokens/s and weight-sync seconds from the RL run's metrics. The
# rollout engine and the learner share the one GPU (half each); weights move through shared memory.
#   bash scripts/gpu_e2e.sh [--model DIR]        (writes gpu_e2e.json to $OUT, else benchmarks/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
MODEL=artifacts/smollm2-135m
[ "${1:-}" = "--model" ] && MODEL="$2"
[ -f "$MODEL/config.json" ] || { echo "no model at $MODEL (run: make smollm2)" >&2; exit 2; }
WORK=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
timeout 470 "$PY" -m tagpr.jobs.cli run configs/demo.yaml \
  --set run.root="$WORK/runs" --set data.root="$WORK/data" --set chains.out="$WORK/chains" \
  --set model.policy="$MODEL" --set model.dtype=bfloat16 \
  --set rollout.num_gpus=0.5 --set "learner.resources={GPU: 0.5}" --set rollout.engine.gpu_memory_utilization=0.3 \
  --set rollout.weight_transport=shm \
  --set rl.prompts_per_step=16 --set sft.batch_size=16 2>&1 | tee "$WORK/log"
"$PY" - "$WORK" "$(( $(date +%s) - start ))" "${OUT:-benchmarks/results}/gpu_e2e.json" <<'PY'
import json, sys
from pathlib import Path
work, seconds, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
[run] = (work / "runs").glob("demo-run-*")
lines = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
learner = [m for m in lines if m["prefix"] == "learner"]
rollout = [m for m in lines if m["prefix"] == "rollout"]
mean = lambda xs: sum(xs) / max(len(xs), 1)
result = {"seconds": seconds, "run_dir": str(run), "report": json.loads((run / "report.json").read_text())["summary"],
          "rollout_tokens_per_s": mean([m["tokens_per_s"] for m in rollout]),
          "learner_tokens_per_s": mean([m["tokens_per_s"] for m in learner]),
          "weight_sync_s": mean([m["weight_sync_s"] for m in learner]), "steps": len(learner)}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
PY
