# Setup on a fresh machine: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PY := .venv/bin/python

.PHONY: setup demo test lint typecheck pytest bench bench-peers conformance schemas clean

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv
	$(UV) sync --locked --all-packages
	@touch $@

setup: .venv/.synced

demo: setup
	$(PY) examples/demo.py
	$(PY) examples/langchain_agent.py

lint: setup
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

typecheck: setup
	$(PY) -m mypy

pytest: setup
	$(PY) -m pytest --cov --cov-branch --cov-report=term-missing

test: lint typecheck pytest

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/trace_bench.py
	$(PY) benchmarks/guard_bench.py
	$(PY) benchmarks/langchain_bench.py
	$(PY) benchmarks/cli_bench.py
	$(PY) benchmarks/import_bench.py
	$(PY) benchmarks/cli_start_bench.py
	$(PY) benchmarks/record_bench.py
	$(PY) benchmarks/server_bench.py
	$(PY) benchmarks/mcp_bench.py
	$(PY) benchmarks/postgres_bench.py
	$(PY) benchmarks/ingest_load.py

# A separate venv for peers we compare against; they are not dependencies of this project.
PEERS := .venv-peers
AGT := agent-governance-toolkit[full]==4.1.0

$(PEERS)/.installed: pyproject.toml
	$(UV) venv --allow-existing --python 3.11 $(PEERS)
	$(UV) pip install --python $(PEERS)/bin/python "$(AGT)" -e .
	@touch $@

bench-peers: $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/peers_bench.py

conformance: setup
	$(PY) -m cra_agents.conformance

schemas: setup
	$(PY) -c "from cra_agents.protocol._schemas import _write; from pathlib import Path; _write(Path('cra_agents/protocol/schemas'))"

clean:
	rm -rf .venv .venv-peers .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
