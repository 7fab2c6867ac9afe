# Self-documenting: `make help` lists every target with the comment after its ##.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# DVC stages call `python -m pipeline ...`: put the project's environment first on PATH.
export PATH := $(BIN):$(PATH)
# Use the local mirror of the public data when one is beside the project (no network needed).
SHARED_MIRROR := $(abspath ../shared/datasets)
ifneq ($(wildcard $(SHARED_MIRROR)/ds005917),)
export TRD_DATA_MIRROR ?= $(SHARED_MIRROR)
endif

.DEFAULT_GOAL := help
.PHONY: help setup run repro test test-fast lint format bench ui clean-outputs

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## Create .venv and install the project with its dev tools

run: setup ## Set up, then run the whole DVC pipeline (dvc repro)
	$(BIN)/dvc repro

repro: run ## Alias of run

test: setup ## Set up, then run the whole test suite (slow end-to-end tests included)
	$(BIN)/python -m pytest

test-fast: setup ## Tests without the slow end-to-end ones
	$(BIN)/python -m pytest -m "not slow"

lint: setup ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Run the benchmark scripts (they print numbers; see benchmarks/README.md)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

ui: setup ## Open the MLflow UI on the embedded store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db)

clean-outputs: ## Delete pipeline outputs and the local MLflow store (keeps .venv)
	rm -rf data/raw data/external data/interim data/processed models/* reports/* mlflow.db mlruns
