# The two commands a newcomer needs: `make run` and `make test`. Both install what is
# missing (Debian packages, then Python packages into .venv) and are idempotent.
#
# Python packages come from requirements.lock only: every one pinned with its hashes
# (pip --require-hashes refuses anything else), the build tools (setuptools, wheel)
# included, so the install is the same on every machine. `make lock` refreshes the lock
# after a change to pyproject.toml (LOCK_ARGS=--upgrade moves every pin to the newest);
# `make lint` audits it with pip-audit. See docs/testing.md "Supply chain".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LOCK := requirements.lock
PIP := $(VENV)/bin/pip --disable-pip-version-check
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
LOCK_ARGS ?=

.PHONY: run test lint audit lock bench bench-quick native deps system-deps clean

# The demo runs the compiled SIP core when it builds (the pure-Python core behaves the
# same, slower: a failed build is a warning, not a stop).
run: deps
	@$(MAKE) --no-print-directory native || echo "warning: the compiled SIP core did not build; running pure Python" >&2
	scripts/run-demo.sh

test: deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory audit

# Known vulnerabilities of every locked package (PyPI's advisory data, looked up per
# pinned version). --strict: a package that could not be checked fails the audit too,
# so an audit that could not reach its advisory data never passes silently.
audit: deps
	$(VENV)/bin/pip-audit --strict --progress-spinner off --require-hashes --disable-pip -r $(LOCK)

# Re-resolve requirements.lock from pyproject.toml (the command is also the lock's header).
# sipgw itself is left out (it is installed from the work tree); the build tools are in.
lock: deps
	$(VENV)/bin/pip-compile --quiet --generate-hashes --all-build-deps --unsafe-package sipgw \
	  --extra dev --extra bench --extra test --extra sync \
	  --no-emit-index-url --no-emit-find-links --strip-extras $(LOCK_ARGS) \
	  --output-file $(LOCK) pyproject.toml

# The bench measures the compiled SIP core, as `make run` runs it (SIPGW_NATIVE=1: an
# error if it is missing or stale); SIPGW_NATIVE=0 measures the pure-Python one.
bench: deps native
	SIPGW_NATIVE=$${SIPGW_NATIVE:-1} $(VENV)/bin/python -m bench

bench-quick: deps native
	SIPGW_NATIVE=$${SIPGW_NATIVE:-1} $(VENV)/bin/python -m bench --quick

# The SIP core's hot path compiled with mypyc into .native/ (scripts/build_native.py);
# a no-op while it is up to date. gateway/native.py loads it only while fresh.
native: deps
	$(VENV)/bin/python scripts/build_native.py

deps: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

# The lock first, hashes required, exactly as pinned: the lock is the whole closure, so
# nothing is resolved again (--no-deps; a fresh venv's pip 23 would otherwise look past
# the pins for an extra, e.g. pip-audit's CacheControl[filecache], and refuse), and
# `pip check` proves the set consistent. Then sipgw itself from the work tree, without
# its dependencies and without build isolation, so that the setuptools and wheel that
# build it are the locked ones and nothing is fetched unpinned.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r $(LOCK)
	$(PIP) check
	$(PIP) install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) run .native .native.new .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
