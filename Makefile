# Two commands from a fresh machine:
#   make run    set up and serve http://127.0.0.1:8000 (SQLite, in-process layer, demo users)
#   make test   set up and run the whole suite, lint included
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format setup bench

# With a pip of its own that can install into another environment (pip 22.3 or later),
# $(PYTHON) installs into the virtualenv, which is then made without pip (ensurepip is
# several seconds of a first `make run`); otherwise the virtualenv's own pip does.
HOST_PIP := $(shell $(PYTHON) -m pip --help 2>/dev/null | grep -q -- '--python <python>' && echo yes)
PIP := $(if $(HOST_PIP),$(PYTHON) -m pip --python $(PY),$(PY) -m pip)

$(VENV)/.installed-%: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(if $(HOST_PIP),--without-pip) $(VENV)
	$(PIP) install --quiet --disable-pip-version-check --no-compile -r requirements$(if $(filter dev,$*),-dev,).txt
	touch $@

setup: $(VENV)/.installed-run
	DEBUG=$${DEBUG-1} $(PY) manage.py seed_demo --migrate

run: setup
	DEBUG=$${DEBUG-1} $(PY) manage.py runserver $(HOST):$(PORT)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The Django tests of the database's behaviour run a second time on a real PostgreSQL,
# which tests/settings.py starts for CALLS_TEST_DATABASE=postgresql and stops at exit
# (the server-process tests run on both databases within the first run).
POSTGRES_TESTS := tests/calls/test_history.py tests/calls/test_history_ringing.py tests/calls/test_calls_api.py tests/calls/test_signals.py tests/accounts/test_seed_demo.py
test: lint
	scripts/ensure-redis
	scripts/ensure-postgres
	scripts/ensure-nginx
	scripts/ensure-chromium
	# socket.io-client, as tests/js/package-lock.json pins it, for tests/test_socketio.py
	npm ci --prefix tests/js --no-audit --no-fund
	node --test tests/js/
	$(PY) -m pytest
	CALLS_TEST_DATABASE=postgresql $(PY) -m pytest $(POSTGRES_TESTS)

# The signaling benchmark (docs/benchmarks.md). With REF_NODE_DIR set (the directory of a
# Node + Socket.IO implementation to compare with), it runs the targets report (--targets,
# which reads REF_NODE_DIR), otherwise the reference set (--matrix).
# BENCH_ARGS="--server uvicorn --scenarios S2" runs one configuration instead;
# BENCH_ARGS="--matrix --ref-node DIR" the reference set beside ref-node, with ratios to it.
BENCH_ARGS ?= $(if $(REF_NODE_DIR),--targets,--matrix)
bench: $(VENV)/.installed-dev
	scripts/ensure-redis
	$(PY) -m bench.run $(BENCH_ARGS)
