# Context Engine: `make up` runs the platform, `make test` runs the suite.
# Both set everything up first: virtualenv, packages, services, database, migrations.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall only when the requirement files change.
REQ_FILES := requirements.txt requirements-dev.txt $(sort $(wildcard requirements/*.txt))
REQ_HASH := $(shell cat $(REQ_FILES) | md5sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
WEB_HOST ?= 127.0.0.1
WEB_PORT ?= 8000
PYTEST_ARGS ?=
# Two pytest-xdist workers, each a test run of its own (project/settings/test.py); a file stays on one worker.
PYTEST_WORKERS ?= 2

export WEB_HOST WEB_PORT

.PHONY: up test test-chaos setup install services migrate lint format bench clean

$(STAMP): $(REQ_FILES)
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

services: install
	$(BIN)/python -m project.bootstrap

migrate: services
	$(BIN)/python manage.py migrate --noinput

setup: migrate

up: setup
	@$(BIN)/python manage.py create_dev_admin
	@echo ""
	@echo "  Context Engine is starting (Ctrl-C stops every process); one address for all of it:"
	@echo "  HAProxy sends /ws/ to uvicorn and the rest to gunicorn (project/serve.py)."
	@echo "    API          http://$(WEB_HOST):$(WEB_PORT)/api/v1/"
	@echo "    API docs     http://$(WEB_HOST):$(WEB_PORT)/api/docs/"
	@echo "    admin        http://$(WEB_HOST):$(WEB_PORT)/admin/"
	@echo "    playground   http://$(WEB_HOST):$(WEB_PORT)/playground/  (a live session in the browser)"
	@echo "    WebSocket    ws://$(WEB_HOST):$(WEB_PORT)/ws/sessions/<id>/  (Authorization: Token <token>, or the subprotocol token.<token>)"
	@echo "    health       http://$(WEB_HOST):$(WEB_PORT)/readyz  metrics http://$(WEB_HOST):$(WEB_PORT)/metrics"
	@echo "    fleet        http://$(WEB_HOST):$(WEB_PORT)/admin/ops/fleet/  (API: /api/v1/ops/queues/, /api/v1/ops/report/)"
	@echo "    flower       http://127.0.0.1:5555/  (tasks of the batch and training workers with FLOWER_EVENTS=true)"
	@echo ""
	@# Every process writes its metrics here and /metrics merges them (apps/ops/metrics.py); stale files go first.
	@rm -rf run/prometheus && mkdir -p run/prometheus
	@# -e /dev/null: honcho would let .env override the shell; project/env.py reads .env
	@# itself, with the shell winning, in every process.
	PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/run/prometheus exec $(BIN)/honcho -e /dev/null start -f Procfile

test: lint
	$(BIN)/python -m project.bootstrap --for-tests
	DJANGO_SETTINGS_MODULE=project.settings.test $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

# The chaos suite in full (tests/chaos): every fault scenario three times against the whole
# stack on private PostgreSQL, Redis and RabbitMQ, reckoned by the ledger. `make test` runs
# its short profile; bench/chaos.py writes the table to bench/results/chaos.md.
test-chaos: install
	$(BIN)/python -m project.bootstrap --for-tests
	CHAOS_PROFILE=full DJANGO_SETTINGS_MODULE=project.settings.test $(BIN)/python -m pytest -p no:xdist \
		--timeout 600 -m chaos tests/chaos $(PYTEST_ARGS)

# Lint: ruff (rules and format), the layer contract (import-linter, pyproject.toml),
# and mypy held to its error budget (scripts/type_budget.json).
LINT_PATHS := apps workers project tests bench scripts

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports
	$(BIN)/python scripts/type_budget.py

format: install
	$(BIN)/ruff format $(LINT_PATHS)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The production path on this machine: both images built, the compose stack in containers, a smoke
# test through HAProxy and a rolling restart under load, then torn down (tests/deploy_stack/driver.py).
.PHONY: test-deploy
test-deploy: install
	$(BIN)/python tests/deploy_stack/driver.py

clean:
	rm -rf $(VENV) staticfiles
