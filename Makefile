# Every target creates or reuses the virtualenv in .venv and installs the pinned dependencies
# (requirements.lock) before it runs, so a fresh clone needs nothing but Python 3.11+ and make.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.8
SANDBOX_PORT ?= 8765

# uv shows its progress on a terminal; in CI, or with output to a file or pipe, it stays quiet.
UV_QUIET := $(if $(CI),--quiet,$(shell [ -t 2 ] || echo --quiet))

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || { echo "• creating the virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "• installing uv $(UV_VERSION) into $(VENV)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	@echo "• installing the pinned dependencies (requirements.lock)"
	@$(BIN)/uv pip install $(UV_QUIET) --python $(BIN)/python -r requirements.lock
	@echo "• installing calendly-connect itself (editable)"
	@$(BIN)/uv pip install $(UV_QUIET) --python $(BIN)/python --no-deps -e .
	@touch $@

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-17s %s\n", $$1, $$2}'

.PHONY: install
install: $(STAMP) ## Create .venv and install the pinned dependencies

WORKERS ?= 1
PORT ?= 8000

# $(call apt_need,<command>,<package>): install a Debian package when its command is missing
# (the tests drive Debian's chromium, wrk and node; nothing else is installed behind your back).
define apt_need
	@command -v $(1) >/dev/null 2>&1 || { echo "installing $(2) with apt (the tests need $(1))"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2) >/dev/null; }
endef

.PHONY: run
run: $(STAMP) ## Run everything locally: Postgres, the sandbox, WORKERS service processes
	$(BIN)/calendly-connect dev --workers $(WORKERS) --port $(PORT) --sandbox-port $(SANDBOX_PORT)

# Where `make run` keeps its Postgres, sandbox state and secrets (`DATA_DIR=.data-2 make run`
# runs a second stack beside the first).
DATA_DIR ?= .data
DOCTOR_ARGS ?=

.PHONY: doctor
doctor: $(STAMP) ## The doctor against the running `make run` stack (settings: DATA_DIR/stack.env)
	@test -f "$(DATA_DIR)/stack.env" || { echo "no running \`make run\` in $(DATA_DIR)/: start one (it writes $(DATA_DIR)/stack.env once ready), or export the settings and run $(BIN)/calendly-connect doctor" >&2; exit 1; }
	@set -a && . "$(DATA_DIR)/stack.env" && set +a && $(BIN)/calendly-connect doctor $(DOCTOR_ARGS)

.PHONY: example
example: $(STAMP) ## As run, plus the example host app (examples/host-app) on EXAMPLE_PORT
	$(BIN)/calendly-connect dev --example --workers $(WORKERS) --port $(PORT) --sandbox-port $(SANDBOX_PORT)

.PHONY: chaos
chaos: $(STAMP) ## Faults under load (Postgres down, kills, 429/5xx), checked against ground truth
	$(BIN)/python -m chaos.run --users 50 --webhooks 10000

.PHONY: demo
demo: $(STAMP) ## Scripted headless run of the main job; exits non-zero if anything fails
	$(BIN)/python -m entrypoints.developer.demo

BENCH_ARGS ?=

.PHONY: bench
bench: $(STAMP) ## The benchmarks (about 12 min): table + benchmarks/results/latest.json
	$(call apt_need,wrk,wrk)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

.PHONY: sandbox
sandbox: $(STAMP) ## Run the Calendly sandbox on SANDBOX_PORT (default 8765)
	$(BIN)/calendly-connect sandbox --port $(SANDBOX_PORT)

# The whole suite in three parts, by what the tests start; a new folder of tests/ joins one.
UNIT_TESTS        := tests/unit tests/http tests/sandbox
INTEGRATION_TESTS := tests/integration tests/faults tests/security tests/fuzz
E2E_TESTS         := tests/e2e tests/packaging

.PHONY: test
test: $(STAMP) test-js ## Run the whole test suite (the JS client's, then the three parts below)
	$(call apt_need,chromium,chromium)
	$(call apt_need,wrk,wrk)
	$(BIN)/pytest

.PHONY: test-js
test-js: ## The JS client's tests (clients/js, Node's own test runner: no npm install)
	$(call apt_need,node,nodejs)
	node --test clients/js/test/

.PHONY: test-unit
test-unit: $(STAMP) ## The core and the HTTP app in-process over fakes, the sandbox: no Postgres
	$(BIN)/pytest $(UNIT_TESTS)

.PHONY: test-integration
test-integration: $(STAMP) ## Adapters on real Postgres and the sandbox, faults, security, fuzzing
	$(BIN)/pytest $(INTEGRATION_TESTS)

.PHONY: test-postgres
test-postgres: $(STAMP) ## The integration tier on any Postgres: make test-postgres URL=postgresql://<superuser>@<host>:<port>/<db>
	@test -n "$(URL)" || { echo "make test-postgres needs URL=postgresql://<superuser>@<host>:<port>/<db> (a superuser: the tests migrate and create databases)" >&2; exit 2; }
	@echo "$(BIN)/pytest $(INTEGRATION_TESTS)  (TEST_DATABASE_URL from URL, not shown)"
	@TEST_DATABASE_URL="$(URL)" $(BIN)/pytest $(INTEGRATION_TESTS)

.PHONY: test-e2e
test-e2e: $(STAMP) ## The real service end to end (HTTP, Postgres, sandbox), demo, chaos, a browser
	$(call apt_need,chromium,chromium)
	$(call apt_need,wrk,wrk)
	$(BIN)/pytest $(E2E_TESTS)

.PHONY: lint
lint: $(STAMP) ## ruff format check, ruff, mypy --strict, import-linter
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: $(STAMP) ## Rewrite the code in the house format
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: lock
lock: $(STAMP) ## Re-pin requirements.lock from the ranges in pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

.PHONY: wheel
wheel: $(STAMP) ## Build the sdist and the wheel into dist/ (what the Dockerfile installs)
	$(BIN)/uv build --out-dir dist

.PHONY: clean
clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
