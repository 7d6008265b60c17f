# glassbreak. Every target that runs something does the whole set-up first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export GLASSBREAK_REQUIRE_KERNEL ?= 1

.PHONY: setup demo test test-fast lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) scripts/demo.py

# The whole suite: unit, integration (real kernel, real redis-server, real HTTP), security.
# GLASSBREAK_REQUIRE_KERNEL=1 (the default here and in CI) turns every kernel/redis skip into a failure.
test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	$(VENV)/bin/ruff check sandbox escalation tests bench scripts
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
