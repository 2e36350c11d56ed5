#!/usr/bin/env bash
# The training side's GPU check (about 2 minutes on one H100): SFT steps (fp32, bf16), a GRPO step
# against the CPU, DeepSpeed ZeRO-2, through the TrainStrategy of the Ray Train workers, and the
# learner's shared-prefix row (bench_learner, tiny policy only); the tiny policy, then a model of
# SmolLM2-135M's shape (107M parameters on the tiny vocabulary). Writes gpu_train_check*.json to
# $OUT when set (the device machine), else to benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUTDIR="${OUT:-benchmarks/results}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rc=0
timeout 240 "$PY" scripts/gpu_train_check.py --out "$OUTDIR/gpu_train_check.json" "$@" || rc=1
timeout 240 "$PY" scripts/gpu_train_check.py --shape smollm2-135m --steps 30 --cpu-steps 3 \
  --out "$OUTDIR/gpu_train_check_135m.json" "$@" || rc=1
exit $rc
