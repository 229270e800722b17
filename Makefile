# MiniModal: `make demo` runs the example end to end on a local stack; `make test` runs the suite;
# `make bench` measures MiniModal against bare Celery in the same run (bench/run.py).
# Both work on a fresh Debian/Ubuntu machine as root: they install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT    := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: install system-deps docker-base test test-postgres lint format demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Services the stack and the tests start themselves: redis-server (the tests run their own on a free port);
# docker-registry (Distribution 2.8: the cluster's image registry, run by `minimodal up` when
# MINIMODAL_REGISTRY is set, never as the system service); chromium for the dashboard's browser test
# (driven by Playwright, which downloads no browser here); postgresql for tests/test_postgres.py (it
# starts a private cluster with initdb/pg_ctl on a free port).
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && $(APT) redis-server; }
	@command -v docker-registry >/dev/null || { apt-get update -qq && $(APT) docker-registry; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && $(APT) postgresql; }
	@command -v debootstrap >/dev/null || { apt-get update -qq && $(APT) debootstrap; }
	@command -v chromium >/dev/null || { apt-get update -qq && $(APT) chromium; }

# A Docker engine (Debian's docker.io, started when none answers) and the base images (Debian bookworm's
# Python 3.11, trixie's 3.13), built locally with debootstrap because no registry can be reached; also
# tagged python:3.11-slim and python:3.13-slim for Image.debian_slim(python_version=). A no-op once built.
# Then gVisor: runsc installed and registered in the engine (reloaded by SIGHUP, never restarted).
docker-base: install system-deps
	docker/base/build.sh
	docker/runsc/setup.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p $(VENV)/mypy-path && ln -sfn ../../sdk $(VENV)/mypy-path/minimodal  # see [tool.mypy]
	$(BIN)/mypy

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

test: install system-deps docker-base lint
	$(BIN)/pytest -q -rs

# The database-facing modules whole, with PostgreSQL instead of SQLite under every stack they start.
PG_TESTS ?= tests/test_remote.py tests/test_deploy.py tests/test_schedules.py tests/test_faults.py \
	tests/test_secrets.py tests/test_objects.py tests/test_stats.py tests/test_scheduler.py
test-postgres: install system-deps
	MINIMODAL_TEST_DATABASE=postgres $(BIN)/pytest -q -rs -m "not docker" $(PG_TESTS)

demo: install system-deps docker-base
	@export PATH="$(CURDIR)/$(BIN):$$PATH"; \
	if minimodal status >/dev/null 2>&1; then started=0; else minimodal up --detach || exit 1; started=1; fi; \
	minimodal run examples/hello.py; code=$$?; \
	if [ $$started = 1 ]; then minimodal down >/dev/null; fi; \
	exit $$code

# Starts its own stacks, Redis and a bare Celery worker on free ports and stops them; figures are
# printed and written to bench/results/latest.json. BENCH_ARGS=--quick for a tiny run.
bench: install system-deps docker-base
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
