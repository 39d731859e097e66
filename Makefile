# Every target creates the environment it needs from a fresh clone: Python comes from the
# machine, uv from PyPI into .tools/, the locked dependencies into .venv/.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export MLOPS_ENV ?= dev

.PHONY: install demo test test-fast test-unit test-integration test-e2e lint validate ui bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra ml --python $(PYTHON)
	touch $@

install: $(VENV)/.synced

## demo: simulate landing days and build bronze, silver, gold and quarantine tables
demo: install
	$(BIN)/mlops demo

## test: lint, validate definitions, then unit, integration and e2e tests (slow ones included)
test: install lint validate
	$(BIN)/pytest mlops_assets_tests/unit -q
	$(BIN)/pytest mlops_assets_tests/integration -q
	$(BIN)/pytest mlops_assets_tests/e2e -q

## test-fast: what `make test` runs, without tests marked slow
test-fast: install lint validate
	$(BIN)/pytest mlops_assets_tests -q -m "not slow"

lint: install
	$(BIN)/ruff check mlops_assets mlops_assets_tests benchmarks
	$(BIN)/ruff format --check mlops_assets mlops_assets_tests benchmarks

validate: install
	tmp=$$(mktemp -d) && cp dagster.yaml $$tmp/ && DAGSTER_HOME=$$tmp MLOPS_DATA_ROOT=$$tmp/data \
	  $(BIN)/dagster definitions validate -w workspace.yaml; rc=$$?; rm -rf $$tmp; exit $$rc

## ui: the Dagster UI of the active environment on http://127.0.0.1:3000
ui: install
	$(BIN)/mlops ui

## bench: the benchmarks under benchmarks/, figures printed and saved to .bench/
bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .tools .bench
