# Two commands work on a fresh machine: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; on a GPU machine install your CUDA torch into the venv before `make setup`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Azurite (the Azure Blob emulator that tests/integration/test_object_stores.py starts), from npm, pinned by its
# lockfile. Without npm, or offline, setup goes on and those tests are skipped with the reason.
AZURITE_DIR := $(VENV)/azurite
AZURITE := $(AZURITE_DIR)/node_modules/.bin/azurite-blob

.PHONY: setup run verify lint test test-all reliability bench-cpu gpu-check clean

setup: $(STAMP) $(AZURITE)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(AZURITE): tests/integration/azurite/package.json tests/integration/azurite/package-lock.json
	mkdir -p $(AZURITE_DIR)
	cp tests/integration/azurite/package.json tests/integration/azurite/package-lock.json $(AZURITE_DIR)/
	-command -v npm >/dev/null && npm ci --prefix $(AZURITE_DIR) --ignore-scripts --no-audit --no-fund --loglevel=error
	-test -x $(AZURITE) && touch $(AZURITE)

run: setup
	$(BIN)/embedrank embed --config configs/local.yaml

verify: setup
	$(BIN)/embedrank verify

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# What CI runs: the lint, then everything but the scenarios marked slow (those run in test-all and reliability).
test: lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-all: lint
	$(BIN)/python -m pytest -q

# Every fault-injection scenario; prints the table of rows in, out, lost, duplicated and rejected.
reliability: setup
	$(BIN)/python -m pytest -q -m reliability

bench-cpu: setup
	$(BIN)/python benchmarks/cpu_bench.py --out benchmarks/results
	$(BIN)/python benchmarks/job_bench.py --out benchmarks/results

# One GPU, no Ray, no network: rows land in benchmarks/results/gpu_check.json as they are measured (BENCHMARKS.md).
gpu-check: setup
	PYTHONPATH=src $(BIN)/python benchmarks/gpu_check.py benchmarks/results $(ARGS)

clean:
	rm -rf $(VENV) out benchmarks/results
