# `make run` starts the server, `make test` runs the whole suite; both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run demo test axe bench bench-speed bench-limits bench-start bench-history bench-auth bench-chat bench-jobs install install-dev browser \
	nginx postgresql wrk

# gunicorn behind nginx, which buffers slow clients (serve.py).
run: install nginx
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python serve.py

demo: install
	$(BIN)/python demo/serve.py

# Two workers (pytest-xdist), each taking whole test files, so that a file's servers and browser are shared by its
# tests: on 2 cores this took the suite from 326 s to 212 s.
test: install-dev browser nginx axe postgresql
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Every benchmark, each writing its section of BENCHMARKS.md; or one: bench-speed, bench-limits, bench-start,
# bench-history, bench-auth, bench-chat, bench-jobs.
bench: bench-speed bench-limits bench-start bench-history bench-auth bench-chat bench-jobs

bench-speed: install-dev
	$(BIN)/python bench/speed.py

bench-limits: install-dev nginx
	$(BIN)/python bench/hostile_use.py

bench-start: install-dev nginx
	$(BIN)/python bench/first_start.py

bench-history: install-dev postgresql wrk
	$(BIN)/python bench/history_store.py

# What authentication adds to GET /history (an API key against AUTH=off), in-process, on JSON and SQLite.
bench-auth: install-dev
	$(BIN)/python bench/auth.py

bench-chat: install-dev
	$(BIN)/python bench/chat_turns.py

# A batch job of 64 images against 64 single uploads from 4 clients, and questions while a job runs (BLIP-base size).
bench-jobs: install-dev
	$(BIN)/python bench/jobs.py

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -r requirements-dev.txt
	touch $@ $(VENV)/.installed

# Debian's Chromium for the browser tests (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# axe-core from npm, which the browser tests run inside the page to check accessibility.
axe: node_modules/axe-core/axe.min.js

node_modules/axe-core/axe.min.js: package.json
	npm install --no-audit --no-fund
	touch $@

# Debian's nginx in front of gunicorn; where apt-get is missing, serve.py runs gunicorn alone and says so.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || ! command -v apt-get >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx; }

# Debian's PostgreSQL, whose initdb and pg_ctl the tests and bench-history use for a throwaway server of their own.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		! command -v apt-get >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y postgresql; }

# wrk, the load generator bench-history drives the replicas with.
wrk:
	@command -v wrk >/dev/null || ! command -v apt-get >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
