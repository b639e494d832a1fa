# Two entry points (see README): `make demo` runs the main job, `make test` the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo plot test lint typecheck unit bench bench-serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loadbalancer simulate

# The pictures README shows of `loadbalancer simulate --plot`: redraw them after changing it.
plot: $(STAMP)
	$(BIN)/loadbalancer simulate --quiet --plot docs/simulate.png
	$(BIN)/loadbalancer simulate examples/scenarios/slow_down.toml --quiet --plot docs/simulate_slow_down.png

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
	$(BIN)/python benchmarks/bench_grpc.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_serve_engine.py

# loadbalancer serve beside nginx, loaded by wrk: installs nginx and wrk (Debian) if missing.
bench-serve: $(STAMP)
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench-serve: installing$$missing"; \
	    apt-get install -y $$missing || { apt-get update && apt-get install -y $$missing; } || exit 1; \
	  else \
	    echo "bench-serve: needs$$missing; install as root: apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis dist
