# The two commands a newcomer needs: `make run` and `make test`. Both install what is
# missing (Debian packages, then Python packages into .venv) and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-quick deps system-deps clean

run: deps
	scripts/run-demo.sh

test: deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: deps
	$(VENV)/bin/python -m bench

bench-quick: deps
	$(VENV)/bin/python -m bench --quick

deps: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -U pip
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
