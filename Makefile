# Everything bootstraps from a fresh clone with only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Peers we measure against live in their own venv, never in the project's.
PEERS  := .venv-peers
# make test also runs the suite on the newest Python 3 of this machine that is newer
# than .venv's, in a venv of its own. Found by `make test` (see FIND_NEWEST); give one
# with `make test NEWEST_PYTHON=/path/to/python3.x`, or skip it with NEWEST_PYTHON=none.
NEWEST := .venv-newest
NEWEST_PYTHON ?=
# The two suites run at once; TEST_JOBS=1 runs them one after the other.
TEST_JOBS ?= 2

.PHONY: all demo test lint typing bench bench-full bench-peers clean suites test-venv test-newest FORCE

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
	@echo "the runs in a browser: $(BIN)/aflow --store sqlite:///.aflow-demo.db ui"

lint: $(STAMP)
	$(BIN)/ruff check aflow tests examples benchmarks
	$(BIN)/ruff format --check aflow tests examples benchmarks
	$(BIN)/mypy --strict aflow
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy --strict --explicit-package-bases tests/typing examples

# Lint once; then the suite on .venv's Python and on the newest one, at once (it mostly
# waits: two runs take about as long as one on 2 cores; each starts its own PostgreSQL on
# a free port). Each run's output is printed whole when it ends; both run to the end.
test: lint
	./scripts/ensure-postgres
	./scripts/ensure-chromium
	@newest="$(NEWEST_PYTHON)"; \
	if [ -z "$$newest" ]; then newest=$$($(BIN)/python -c "$$FIND_NEWEST") || exit 1; fi; \
	if [ "$$newest" = none ]; then newest=; fi; \
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target suites NEWEST_PYTHON="$$newest"; \
	status=$$?; \
	ran="$$($(BIN)/python -V 2>&1)$${newest:+ and $$($$newest -V 2>&1)}"; \
	if [ $$status = 0 ]; then echo "=== make test: the suite passed on $$ran"; \
	else echo "=== make test: the suite FAILED (see above) on $$ran" >&2; fi; \
	if [ -z "$$newest" ]; then \
		echo "" >&2; \
		echo "**********************************************************************" >&2; \
		echo "*** make test: the suite ran on ONE Python only ($$($(BIN)/python -V 2>&1))." >&2; \
		echo "*** No newer Python 3 was found (python3.N on PATH, pyenv, uv), or it was" >&2; \
		echo "*** skipped (NEWEST_PYTHON=none): the newer versions pyproject.toml" >&2; \
		echo "*** claims were NOT tested here." >&2; \
		echo "**********************************************************************" >&2; \
	fi; \
	exit $$status

# Also by themselves, without lint: make test-venv, make test-newest NEWEST_PYTHON=...
suites: test-venv $(if $(NEWEST_PYTHON),test-newest)

test-venv: $(STAMP)
	@echo "=== pytest on $$($(BIN)/python -V 2>&1) ($(BIN))"
	$(BIN)/python -m pytest

test-newest: $(NEWEST)/.installed
	@echo "=== pytest on $$($(NEWEST)/bin/python -V 2>&1) ($(NEWEST), from $(NEWEST_PYTHON))"
	$(NEWEST)/bin/python -m pytest

# (Re)created whenever NEWEST_PYTHON is another interpreter than the one it was made
# from; the file changes only then, so the install below is not redone every time.
$(NEWEST)/.python: FORCE
	@[ -n "$(NEWEST_PYTHON)" ] || { echo "give NEWEST_PYTHON=/path/to/python3.x" >&2; exit 2; }
	@want="$$($(NEWEST_PYTHON) -c 'import sys; print(sys.executable, sys.version)' | tr '\n' ' ')"; \
	if [ "$$(cat $@ 2>/dev/null)" != "$$want" ]; then \
		echo "$(NEWEST): creating it from $(NEWEST_PYTHON)"; \
		rm -rf $(NEWEST) && $(NEWEST_PYTHON) -m venv $(NEWEST) && \
		$(NEWEST)/bin/python -m pip install --quiet --upgrade pip && \
		echo "$$want" > $@; \
	fi

$(NEWEST)/.installed: pyproject.toml $(NEWEST)/.python
	$(NEWEST)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

FORCE:

# Prints the newest usable CPython 3 newer than the running one (a final release, with
# the GIL, with venv and ensurepip), or "none". Looks at python3.N on PATH (a pyenv shim
# of a version that is not selected fails its probe and is skipped), pyenv's versions
# and uv's. Run by .venv's Python, so "newer" means newer than .venv's.
define FIND_NEWEST
import glob, os, re, subprocess, sys
found = set()
for folder in os.environ.get("PATH", "").split(os.pathsep):
    found.update(glob.glob(os.path.join(folder or ".", "python3.*")))
pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
found.update(glob.glob(os.path.join(pyenv, "versions", "3.*", "bin", "python3")))
found.update(glob.glob(os.path.expanduser("~/.local/share/uv/python/cpython-3.*/bin/python3")))
probe = (
    "import sys, sysconfig, venv, ensurepip; v = sys.version_info; "
    "ok = v.releaselevel == 'final' and not sysconfig.get_config_var('Py_GIL_DISABLED'); "
    "print(ok, v.major, v.minor, v.micro, sys.executable)"
)
best = None
for path in sorted(found):
    if not re.fullmatch(r"python3(\.\d+)?", os.path.basename(path)):
        continue
    try:
        done = subprocess.run([path, "-c", probe], capture_output=True, text=True, timeout=30)
        ok, major, minor, micro, exe = done.stdout.split(maxsplit=4)
    except (OSError, subprocess.SubprocessError, ValueError):
        continue
    version = (int(major), int(minor), int(micro))
    if done.returncode == 0 and ok == "True" and version[:2] > sys.version_info[:2]:
        if best is None or version > best[0]:
            best = (version, exe.strip())
print(best[1] if best else "none")
endef
export FIND_NEWEST

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

# `make bench`: every benchmark at a reduced size, both loops, in a few minutes; the
# tables go to benchmarks/quick/ (not committed). `make bench-full` is the full run that
# benchmarks/RESULTS.md, DURABLE.md, FLOWS.md and OPS.md record (about half an hour).
QUICK_OUT := benchmarks/quick
bench: $(STAMP) $(VENV)/.bench-installed
	@mkdir -p $(QUICK_OUT)
	@echo "== 1/9 graphs, per node (benchmarks/run.py --quick)"
	$(BIN)/python benchmarks/run.py --quick --repeat 3 --markdown $(QUICK_OUT)/RESULTS.md
	@echo "== 2/9 short runs, per run, as a web handler sees them (benchmarks/short.py --quick)"
	$(BIN)/python benchmarks/short.py --quick --markdown $(QUICK_OUT)/RESULTS.md
	@echo "== 3/9 the saga over HTTP: uvicorn, FastAPI, 64 connections (benchmarks/http.py --quick)"
	$(BIN)/python benchmarks/http.py --quick --markdown $(QUICK_OUT)/RESULTS.md
	@echo "== 4/9 durable runs (benchmarks/durable.py --quick)"
	./scripts/ensure-postgres
	$(BIN)/python benchmarks/durable.py --quick --markdown $(QUICK_OUT)/DURABLE.md
	@echo "== 5/9 TaskFlow-style flows (benchmarks/flows.py --quick; TaskFlow itself: make bench-full)"
	$(BIN)/python benchmarks/flows.py --quick --markdown $(QUICK_OUT)/FLOWS.md
	@echo "== 6/9 dflow-style ops (benchmarks/ops.py --quick)"
	$(BIN)/python benchmarks/ops.py --quick --markdown $(QUICK_OUT)/OPS.md
	@echo "== 7/9 import aflow against import anyio (benchmarks/imports.py --runs 5)"
	$(BIN)/python benchmarks/imports.py --runs 5 --markdown $(QUICK_OUT)/RESULTS.md
	@echo "== 8/9 the dashboard's pages for a big run (benchmarks/dashboard.py --quick)"
	$(BIN)/python benchmarks/dashboard.py --quick --markdown $(QUICK_OUT)/RESULTS.md
	@echo "== 9/9 steps in worker processes (benchmarks/executors.py --quick)"
	$(BIN)/python benchmarks/executors.py --quick --markdown $(QUICK_OUT)/RESULTS.md
	@echo "tables: $(QUICK_OUT)/*.md"

bench-full: $(STAMP) $(VENV)/.bench-installed $(PEERS)/.installed
	$(BIN)/python benchmarks/run.py --repeat 5 --anyio-max-nodes 100000 --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/short.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/http.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/imports.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/dashboard.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/executors.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/flows.py --taskflow-python $(PEERS)/bin/python --markdown benchmarks/FLOWS.md
	./scripts/ensure-postgres
	$(BIN)/python benchmarks/durable.py --markdown benchmarks/DURABLE.md
	$(BIN)/python benchmarks/ops.py --markdown benchmarks/OPS.md

bench-peers: $(STAMP) $(VENV)/.bench-installed $(PEERS)/.peers-installed
	$(BIN)/python benchmarks/run.py --repeat 5 --anyio-max-nodes 100000 --peers-python $(PEERS)/bin/python --markdown benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) $(NEWEST) $(PEERS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
