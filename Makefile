# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
HOST ?= 127.0.0.1
export BENTOML_DO_NOT_TRACK := True

.DEFAULT_GOAL := help
.PHONY: help install serve train test test-fast lint typecheck check build contract soak bench bench-peers bench-sweep wrk browser clean kserve-sdk
.PHONY: container test-container spark-demo bench-spark

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalls when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,evaluate,spark,lightgbm,xgboost,mlflow]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the project with its dev tools

train: install ## train the default model (iris) into the BentoML model store
	$(BIN)/python train.py

serve: install ## train the default model if the store lacks it, then serve on $(HOST):$(PORT) (and gRPC on GRPC_PORT if set)
	$(BIN)/python train.py --if-missing
	$(if $(GRPC_PORT),KEYED_GRPC_PORT=$(GRPC_PORT)) $(BIN)/bentoml serve service:KeyedPrediction --host $(HOST) --port $(PORT)

# The KServe SDK in a virtual environment of its own: kserve 0.21 pins pandas<3 and
# protobuf<7, which ours are not. The tests run its clients there (tests/kserve_sdk.py).
KSERVE_VENV := .venv-kserve
$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet "kserve>=0.15,<0.22"
	touch $@

kserve-sdk: $(KSERVE_VENV)/.installed ## the KServe SDK in .venv-kserve, for the tests that use its clients

test: install browser kserve-sdk ## run every test, the slow ones (real servers, bento build) included
	$(BIN)/pytest

test-fast: install ## run the tests that need no real server
	$(BIN)/pytest -m "not slow"

lint: install ## ruff lint and format check, and the import rules between the package's parts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install ## mypy
	$(BIN)/mypy

check: lint typecheck test ## everything CI should be happy with

# The bento carries one model version, MODEL_TAG's (the iris model when unset), and serves
# it with no MODEL_TAG set, wherever it is imported or containerised. It installs the
# packages that model was pickled with, at their major.minor (keyed_serving.model.bento):
# bentofile.yaml plus those pins, written to .bentofile.build.yaml.
build: install ## bentoml build: the bento carries MODEL_TAG's model (make build MODEL_TAG=name:latest) and serves it
	$(if $(MODEL_TAG),,$(BIN)/python train.py --if-missing)
	$(BIN)/python -m keyed_serving.model.bento bentofile.yaml .bentofile.build.yaml
	$(BIN)/bentoml build -f .bentofile.build.yaml .

soak: install ## 64 clients x 60 s with 5% poisoned instances against a real server; fails on any lost or mispaired key
	$(BIN)/python bench/soak.py --clients 64 --seconds 60 --poison 0.05 --out bench/soak.md

# MLServer in a virtual environment of its own: its pins (uvloop<0.22 for 1.7.1) are not
# ours. The same scikit-learn as ours, to load the same joblib file.
MLSERVER := bench/.venv-mlserver/bin/mlserver
$(MLSERVER): | $(BIN)/python
	$(PYTHON) -m venv bench/.venv-mlserver
	bench/.venv-mlserver/bin/pip install --quiet "mlserver==1.7.1" "mlserver-sklearn==1.7.1" \
		"uvloop<0.22" "scikit-learn==$$($(BIN)/python -c 'import sklearn; print(sklearn.__version__)')" \
		"pandas==$$($(BIN)/python -c 'import pandas; print(pandas.__version__)')" \
		"numpy==$$($(BIN)/python -c 'import numpy; print(numpy.__version__)')"

# BENCH_ARGS reruns a part, e.g. BENCH_ARGS="--servers keyed,mlserver --only sweep --out /tmp/s.md"
# (bench/harness.py --help). The whole default run takes about 22-25 minutes on 2 cores.
bench: install wrk ## the benchmark: real servers under wrk, answers checked, baselines in the same run (bench/results.md)
	$(BIN)/python bench/harness.py $(BENCH_ARGS)

bench-peers: install wrk $(MLSERVER) ## install MLServer 1.7 (bench/.venv-mlserver), then run the benchmark with it
	$(BIN)/python bench/harness.py $(BENCH_ARGS)

bench-sweep: install wrk ## the sweep behind the default workers and batching bounds (bench/sweep.md)
	$(BIN)/python bench/sweep.py

browser: ## a headless browser for the API page's test (Debian's chromium)
	@command -v chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

wrk: ## the load generator (Debian's wrk, with LuaJIT)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

contract: ## check a running server (URL=...) against the shared wire contract
	$(BIN)/python ../shared/contract_check.py $(or $(URL),http://127.0.0.1:$(PORT))

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) $(KSERVE_VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info

# --- ship and scale out (issue 6) ---------------------------------------------------------
# buildah needs no Docker engine; chroot isolation works without user namespaces or an OCI
# runtime (podman's crun may not set rlimits in a sandbox). CONTAINER_BACKEND=docker where
# a Docker engine runs.
CONTAINER_BACKEND ?= buildah
IMAGE ?= keyed-prediction:latest
BUILDAH_ENV := BUILDAH_ISOLATION=chroot

container: build ## bentoml containerize the latest bento into $(IMAGE) (buildah; see README)
ifeq ($(CONTAINER_BACKEND),buildah)
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || \
		{ apt-get update -q && apt-get install -y -q buildah debootstrap; }
	$(BUILDAH_ENV) deploy/container/base_image.sh
	$(BUILDAH_ENV) $(BIN)/bentoml containerize keyed-prediction:latest --backend buildah -t $(IMAGE)
else
	$(BIN)/bentoml containerize keyed-prediction:latest --backend $(CONTAINER_BACKEND) -t $(IMAGE)
endif

test-container: install ## build the image with buildah, run it, probe it and predict from inside (minutes)
	KEYED_CONTAINER_TESTS=1 $(BIN)/pytest tests/e2e/test_container.py

spark-demo: install ## score a generated table by key with Spark in local mode (ROWS=, CORES=)
	$(BIN)/python train.py --if-missing
	$(BIN)/python -m keyed_serving.offline.spark --rows $(or $(ROWS),200000) --cores $(or $(CORES),2)

bench-spark: install ## Spark local-mode rows/s with 1 and 2 cores (bench/spark_scoring.md)
	$(BIN)/python bench/spark_scoring.py
