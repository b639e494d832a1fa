# Two entry points (see README): `make demo` runs the main job, `make test` the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loadbalancer simulate

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_get.py
	$(BIN)/python benchmarks/bench_rebuild_weighted.py
	$(BIN)/python benchmarks/bench_hashing.py
	$(BIN)/python benchmarks/bench_ring.py
	$(BIN)/python benchmarks/bench_failover.py
	$(BIN)/python benchmarks/bench_http.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist
