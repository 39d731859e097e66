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

.PHONY: install jars weed demo test test-fast test-unit test-integration test-e2e lint validate ui up down bench clean release-check deploy

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra ml --extra spark --extra stack --python $(PYTHON)
	touch $@

install: $(VENV)/.synced

# What `make demo` imports only: the project, its core dependencies and the ml extra (MLflow,
# scikit-learn, Evidently, plotly), without Spark, the stack's clients or the dev tools. Inexact:
# it adds what is missing and removes nothing, so a full `install` before or after stays whole.
$(VENV)/.synced-demo: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --no-dev --extra ml --python $(PYTHON)
	touch $@

# The io.delta jars matching the installed delta-spark, and the Hadoop S3A connector (hadoop-aws
# and its AWS SDK) matching pyspark's Hadoop, from Maven Central into .jars/ (Spark loads them
# from there; nothing is downloaded at run time). Maven caches them in ~/.m2.
JARS := .jars
MVN_DEPENDENCY := org.apache.maven.plugins:maven-dependency-plugin:3.8.1
$(JARS)/.fetched: uv.lock mlops_assets/lakehouse/spark_session.py | $(VENV)/.synced
	mkdir -p $(JARS)
	set -e; for coordinate in $$($(BIN)/python -m mlops_assets.lakehouse.spark_session); do \
	  mvn -q -B $(MVN_DEPENDENCY):copy -Dartifact=$$coordinate -DoutputDirectory=$(JARS); \
	done
	touch $@

## jars: fetch the io.delta jars Spark needs (Delta Lake on Spark) into .jars/
jars: $(JARS)/.fetched

# SeaweedFS, the S3-compatible store the object-storage tests and benchmarks run a lake on:
# the pinned module from the Go module proxy, built once per machine outside the clone (about
# 7 minutes, 230 MB), then linked to .tools/bin/weed. `go install` refuses the module (its
# go.mod has replace directives), so a writable copy of it is built instead.
WEED_MODULE := github.com/seaweedfs/seaweedfs
WEED_VERSION := v0.0.0-20261109003541-7506e5f91cd6
WEED_CACHE := $(HOME)/.cache/mlops-tools/weed-$(WEED_VERSION)
WEED := .tools/bin/weed
$(WEED_CACHE)/weed:
	mkdir -p $(WEED_CACHE)
	set -eo pipefail; work=$$(mktemp -d); trap 'chmod -R u+w "$$work"; rm -rf "$$work"' EXIT; \
	  source=$$(cd "$$work" && go mod download -json $(WEED_MODULE)@$(WEED_VERSION) \
	    | $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'); \
	  cp -r "$$source" "$$work/src"; chmod -R u+w "$$work/src"; \
	  cd "$$work/src" && go build -o $(WEED_CACHE)/weed.partial ./weed; \
	  mv $(WEED_CACHE)/weed.partial $(WEED_CACHE)/weed

$(WEED): $(WEED_CACHE)/weed
	mkdir -p $(dir $@)
	ln -sf $< $@

## weed: build SeaweedFS (S3-compatible object store) once per machine, link .tools/bin/weed
weed: $(WEED)

## demo: the whole loop on simulated days (lake, champion, predictions, drift, retraining);
## DEMO_ARGS="--days 6 --drift-days 7 --per-day 2000" sizes it (see `mlops demo --help`)
DEMO_ARGS ?=
demo: $(VENV)/.synced-demo
	$(BIN)/mlops demo $(DEMO_ARGS)

# A process time zone other than UTC: times must be instants whatever the machine's zone is.
# The unit suite runs in both zones, the integration and e2e suites in this one.
OTHER_TZ := America/Los_Angeles

# Parallel test workers (pytest-xdist). Tests that share a module's or the session's lake,
# model or server run on one worker (`--dist loadgroup`, groups set in mlops_assets_tests/
# conftest.py); the e2e tests mostly wait on servers, so there are more workers than cores.
TEST_WORKERS ?= 4
PARALLEL = -n $(TEST_WORKERS) --dist loadgroup
# A test run carries a marker (MLOPS_TEST_RUN) its workers and servers inherit; when the run
# ends, finished or killed (INT, TERM), whatever still carries it is stopped
# (mlops_assets_tests/reap.py). $(call reaped,command[,command,label]): one command, or two
# at the same time (the second's lines prefixed with [label]), in the background so a signal
# reaches the trap at once; fails when one of them failed.
define reaped
set -u; run="make-$@-$$$$"; export MLOPS_TEST_RUN="$$run"; \
trap '$(BIN)/python -m mlops_assets_tests.reap "$$run"' EXIT; trap 'exit 143' INT TERM; \
rc=0; { $(1); } & first=$$!; \
$(if $(2),(set -o pipefail; { $(2); } 2>&1 | sed -u 's|^|[$(3)] |') & second=$$!; \
wait $$second || rc=1;) wait $$first || rc=1; exit $$rc
endef
PYTEST_UTC_UNIT = $(BIN)/pytest mlops_assets_tests/unit -q -p no:cacheprovider
PYTEST_OTHER_TZ = TZ=$(OTHER_TZ) $(BIN)/pytest -q --durations=40 $(PARALLEL)

## test: lint, validate definitions, then unit, integration and e2e tests (slow ones included)
## in one parallel pytest process in $(OTHER_TZ), beside the unit suite in UTC
test: install jars weed lint validate
	$(call reaped,$(PYTEST_OTHER_TZ) mlops_assets_tests,$(PYTEST_UTC_UNIT),unit UTC)

## test-fast: what `make test` runs, without tests marked slow
test-fast: install jars weed lint validate
	$(call reaped,$(PYTEST_OTHER_TZ) mlops_assets_tests -m "not slow",$(PYTEST_UTC_UNIT) -m "not slow",unit UTC)

## test-integration: the integration suite (parallel workers, in $(OTHER_TZ))
test-integration: install jars weed
	$(call reaped,$(PYTEST_OTHER_TZ) mlops_assets_tests/integration)

## test-e2e: the end-to-end suite (real servers, browser, Spark cluster; parallel workers)
test-e2e: install jars weed
	$(call reaped,$(PYTEST_OTHER_TZ) mlops_assets_tests/e2e)

lint: install
	$(BIN)/ruff check mlops_assets mlops_assets_tests benchmarks
	$(BIN)/ruff format --check mlops_assets mlops_assets_tests benchmarks

validate: install
	tmp=$$(mktemp -d) && cp dagster.yaml $$tmp/ && DAGSTER_HOME=$$tmp MLOPS_DATA_ROOT=$$tmp/data \
	  $(BIN)/dagster definitions validate -w workspace.yaml; rc=$$?; rm -rf $$tmp; exit $$rc

## test-unit: the unit suite in both process time zones (what CI runs on every change)
test-unit: install jars
	$(call reaped,$(PYTEST_UTC_UNIT),TZ=$(OTHER_TZ) $(PYTEST_UTC_UNIT),unit $(OTHER_TZ))

## deploy: record this checkout as the code of prod (on prod's machine; CI's deploy job runs
## it for a release tag): reloads prod's Dagster webserver, lists what is stale by code.
## WHO="name" names who deploys (default: the user name).
deploy: install
	MLOPS_ENV=prod $(BIN)/mlops release deploy $(if $(WHO),--who "$(WHO)")

# The staging stage's feed and gates: a few small days, on which a model without signal has a
# PR-AUC near the fraud rate (about 0.01).
STAGING_ARGS ?= --days 5 --per-day 1500 --min-pr-auc 0.02 --min-recall-at-1pct-fpr 0
RELEASE_ROOT ?= $(or $(MLOPS_DATA_ROOT),$(CURDIR)/data)

## release-check: the release's stages as CI runs them: lint, validate, unit tests, then the
## staging stage (`mlops release staging`) against prod's champion; on a temporary data root
## seeded with a small prod (`mlops release seed-prod`) when $(RELEASE_ROOT)/prod has none
release-check: install lint validate
	$(BIN)/pytest mlops_assets_tests/unit -q
	set -e; root=$(RELEASE_ROOT); \
	if [ ! -f "$$root/prod/mlflow.db" ]; then \
	  root=$$(mktemp -d); trap 'rm -rf "$$root"' EXIT; \
	  echo "no prod under $(RELEASE_ROOT): seeding a small one in $$root"; \
	  MLOPS_ENV=prod MLOPS_DATA_ROOT=$$root $(BIN)/mlops release seed-prod; \
	fi; \
	MLOPS_ENV=staging MLOPS_DATA_ROOT=$$root $(BIN)/mlops release staging $(STAGING_ARGS)

## ui: the Dagster UI of the active environment on http://127.0.0.1:3000
ui: install
	$(BIN)/mlops ui

## up: the local production-shaped stack (PostgreSQL, Redis, MLflow, Dagster webservers and
## daemon, serving replicas) on 127.0.0.1; state under data/<env>/stack/
up: install
	$(BIN)/mlops stack up

## down: stop the local stack (its state stays under data/<env>/)
down: install
	$(BIN)/mlops stack down

## bench: the benchmarks under benchmarks/, figures printed and saved to .bench/
bench: install jars weed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .tools .bench
