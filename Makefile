# Everything bootstraps from a fresh clone with only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Peers we measure against live in their own venv, never in the project's.
PEERS  := .venv-peers

.PHONY: all demo test lint typing bench bench-peers clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/order_saga.py
	$(BIN)/aflow --store sqlite:///.aflow-demo.db run examples.durable_orders:order_saga --param order_id=o-42
	$(BIN)/aflow --store sqlite:///.aflow-demo.db runs --limit 5

lint: $(STAMP)
	$(BIN)/ruff check aflow tests examples benchmarks
	$(BIN)/ruff format --check aflow tests examples benchmarks
	$(BIN)/mypy --strict aflow
	$(BIN)/mypy --strict tests/typing examples/dflow_style.py examples/typed_ops.py

test: lint
	./scripts/ensure-postgres
	$(BIN)/python -m pytest

$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet 'taskflow>=6,<7'
	touch $@

# The benchmarks' own extra (matplotlib, for the scaling chart), in the project venv.
$(VENV)/.bench-installed: pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

# Every peer run.py measures with --peers-python, in the peers' venv only.
$(PEERS)/.peers-installed: $(PEERS)/.installed
	$(PEERS)/bin/python -m pip install --quiet 'taskflow>=6,<7' 'celery>=5.4,<6' \
		'dask[distributed]>=2024.1' 'prefect>=3,<4'
	touch $@

bench: $(STAMP) $(VENV)/.bench-installed $(PEERS)/.installed
	$(BIN)/python benchmarks/run.py --repeat 5 --anyio-max-nodes 100000 --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/flows.py --taskflow-python $(PEERS)/bin/python --markdown benchmarks/FLOWS.md
	./scripts/ensure-postgres
	$(BIN)/python benchmarks/durable.py --markdown benchmarks/DURABLE.md
	$(BIN)/python benchmarks/ops.py --markdown benchmarks/OPS.md

bench-peers: $(STAMP) $(VENV)/.bench-installed $(PEERS)/.peers-installed
	$(BIN)/python benchmarks/run.py --repeat 5 --anyio-max-nodes 100000 --peers-python $(PEERS)/bin/python --markdown benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) $(PEERS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
