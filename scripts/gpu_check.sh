#!/usr/bin/env bash
# The rollout stack's GPU check (at most 8 minutes on one H100): CUDA generation (vLLM, else the HF
# adapter), a weight push, the CUDA IPC transport, NCCL (needs two GPUs), a LoRA hot-load.
# Writes gpu_check.json to $OUT when set (the device machine), else to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PY" scripts/gpu_check.py --out "${OUT:-benchmarks/results}/gpu_check.json" "$@"
