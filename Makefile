# `make demo` and `make test` work on a fresh machine: they create the virtualenv,
# install the project, and install the system tools they need when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench bench-tools soak system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mcplb demo

lint: $(STAMP)
	$(VENV)/bin/ruff check mcplb/__init__.py proxy strategies healthcheck tests bench
	$(VENV)/bin/ruff format --check proxy strategies healthcheck tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict mcplb

# Real peers the tests start on their own ports: redis-server, and prometheus with
# promtool for the metrics and alert-rule tests (Debian packages; services stay stopped).
system-deps:
	@if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server \
			&& (service redis-server stop >/dev/null 2>&1 || true); \
		else echo "the tests need redis-server: apt-get install redis-server"; exit 1; fi; \
	fi
	@if ! { command -v promtool && command -v prometheus; } >/dev/null 2>&1 \
		&& ! { [ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ]; }; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
			&& (service prometheus stop >/dev/null 2>&1 || true) \
			&& (service prometheus-node-exporter stop >/dev/null 2>&1 || true) \
			&& (update-rc.d prometheus disable >/dev/null 2>&1 || true); \
		else echo "the tests need prometheus and promtool: apt-get install prometheus"; exit 1; fi; \
	fi

unit: $(STAMP) system-deps
	$(PY) -m pytest -q

test: lint typecheck unit

# Load generator and reference proxies for the benchmark (Debian packages).
bench-tools:
	@missing=""; \
	for tool in wrk:wrk haproxy:haproxy nginx:nginx-light; do \
		command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
			&& (service nginx stop; service haproxy stop) >/dev/null 2>&1 || true; \
		else echo "install:$$missing (HAProxy/nginx are skipped when absent)"; fi; \
	fi

bench: $(STAMP) bench-tools
	$(PY) bench/http_bench.py --duration 10

# Mixed MCP load with a backend kill, two reloads and a Redis restart (about 3 minutes).
soak: $(STAMP) system-deps
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
