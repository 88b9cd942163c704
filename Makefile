# Local AI Orchestrator — `make run` starts the proxy, `make test` runs the whole suite.
# Both create the virtualenv (.venv) and install what they need on first use.

SHELL   := /bin/bash
VENV    ?= .venv
SHARED  ?= ../shared
CONFIG  ?= orchestrator.yaml
BIN     := $(VENV)/bin

# The first Python >= 3.12 found: python3.12, python3, then pyenv's installed versions.
PYTHON ?= $(shell for c in python3.12 python3 \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
	  if $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
	    command -v $$c 2>/dev/null || echo $$c; break; fi; done)

.PHONY: help run test lint check bench bundle clean system-deps

help:
	@echo "make run     set up and run the proxy on the embedded defaults (127.0.0.1:8080)"
	@echo "make test    set up and run the whole test suite (lint, types, tests)"
	@echo "make check   validate orchestrator.yaml and rules/"
	@echo "make bench   run the benchmark scripts (routing, proxy overhead, long streams, rate-limit check, response cache, telemetry, scale-out, refresh)"
	@echo "make bundle  rebuild addon/bundled/benchmarks.db from $(SHARED)/fixtures/sources"
	@echo "make clean   remove the virtualenv and local data/"

$(BIN)/.installed: pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: Python >= 3.12 is required and none was found (tried python3.12, python3, ~/.pyenv/versions)." >&2; \
	  echo "       Install it, e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv'," >&2; \
	  echo "       or point make at one: make PYTHON=/path/to/python3.12 run" >&2; \
	  exit 1; fi
	@echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

run: $(BIN)/.installed
	$(BIN)/orchestrator run -c $(CONFIG)

check: $(BIN)/.installed
	$(BIN)/orchestrator check -c $(CONFIG)

lint: $(BIN)/.installed
	$(BIN)/ruff check addon tests scripts
	$(BIN)/ruff format --check addon tests scripts
	$(BIN)/mypy

# Debian's chromium, postgresql and redis-server, installed when missing (root + apt-get)
system-deps:
	@scripts/system_deps.sh

test: $(BIN)/.installed system-deps lint
	$(BIN)/pytest

bench: $(BIN)/.installed system-deps
	$(BIN)/python scripts/bench_routing.py
	$(BIN)/python scripts/bench_proxy.py
	$(BIN)/python scripts/bench_streams.py
	$(BIN)/python scripts/bench_limits.py
	$(BIN)/python scripts/bench_cache.py
	$(BIN)/python scripts/bench_telemetry.py
	$(BIN)/python scripts/bench_scaleout.py
	@if [ -f scripts/bench_refresh.py ]; then $(BIN)/python scripts/bench_refresh.py --from $(SHARED)/fixtures/sources; fi

bundle: $(BIN)/.installed
	$(BIN)/python -m addon.refresh --from $(SHARED)/fixtures/sources --out addon/bundled/benchmarks.db \
	  --aliases rules/aliases.yaml

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis
