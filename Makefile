# Two commands on a fresh machine (CPython 3.11, Linux x86_64):
#   make demo   - builds the environment (.venv) and runs the built-in identification demo
#   make test   - builds the same environment and runs every test tier (core, real weights, real WBIA)
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: env demo test lint bench clean

env:
	bash .ci/build_env.sh $(VENV)

demo: env
	$(VENV)/bin/wbia-lightglue demo --output demo-output

test: env
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: env
	$(VENV)/bin/python benchmarks/bench_match.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
