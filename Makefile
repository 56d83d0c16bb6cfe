# `make demo` and `make test` work on a fresh machine: they create the virtualenv,
# install the project, and install the system tools they need when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo check test test-fast test-pure test-pure-parallel test-pure-timing test-compiled test-bench compiled-tree lint typecheck compiled bench bench-tools bench-latency bench-scale soak system-deps node-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mcplb demo

lint: $(STAMP)
	$(VENV)/bin/ruff check setup.py mcplb/__init__.py proxy strategies healthcheck tests bench
	$(VENV)/bin/ruff format --check setup.py proxy strategies healthcheck tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict mcplb

# Real peers the tests start on their own ports: redis-server and redis-sentinel, prometheus with promtool
# for the metrics and alert-rule tests, and dnsmasq for DNS discovery (Debian packages;
# services stay stopped).
system-deps:
	@if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server \
			&& (service redis-server stop >/dev/null 2>&1 || true); \
		else echo "the tests need redis-server: apt-get install redis-server"; exit 1; fi; \
	fi
	@# redis-sentinel for the failover tests (one master, one replica, three sentinels).
	@if ! command -v redis-sentinel >/dev/null 2>&1 && [ ! -x /usr/bin/redis-sentinel ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-sentinel \
			&& (service redis-sentinel stop >/dev/null 2>&1 || true) \
			&& (update-rc.d redis-sentinel disable >/dev/null 2>&1 || true); \
		else echo "the tests need redis-sentinel: apt-get install redis-sentinel"; exit 1; fi; \
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
	@# dnsmasq for the DNS discovery tests: the binary only (dnsmasq-base), not the
	@# "dnsmasq" package, whose service would take port 53 and the system's resolver.
	@if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsmasq-base; \
		else echo "the tests need dnsmasq: apt-get install dnsmasq-base"; exit 1; fi; \
	fi

# Node 22 (the npm package "node"), the MCP TypeScript SDK, the official conformance suite
# and server-everything for the interop tests, pinned by tests/interop/package-lock.json.
# Only npm itself comes from the system (Debian package), and only when missing.
INTEROP := tests/interop
NODE_STAMP := $(INTEROP)/node_modules/.installed-stamp

$(NODE_STAMP): $(INTEROP)/package.json $(INTEROP)/package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; \
		else echo "the interop tests need npm: apt-get install npm"; exit 1; fi; \
	fi
	cd $(INTEROP) && npm ci --no-audit --no-fund --loglevel=error
	$(INTEROP)/node_modules/.bin/node --version
	touch $(NODE_STAMP)

node-deps: $(NODE_STAMP)

# The suite in tiers (docs/testing.md). tests/support/tiers.py marks every test from what it
# reaches (its function, class, fixtures and parameters, followed through tests/; its
# module's imports), never from a list: "process" (it starts a process: a proxy, a backend,
# redis-server, Node...), "service" (a program the machine may lack), "bench" (bench/: the
# benchmarks and the perf gate), "compiled" (it runs compiled code in-process: its module
# imports a compiled module, or a fixture or helper it reaches is defined in one, other than
# through the config loader; or it starts a proxy process), "interop" (its subject is a
# peer's protocol and it is heavy: the Node/TypeScript SDKs, the conformance suite, the
# OpenID provider, Redis Sentinel, the soak), "timing" (its own code reads the clock to
# assert how long something took, or it fails a Redis master over).
#
# Decisions (issue 23, item 5):
# - The compiled pass proves that the mypyc-compiled modules behave as the pure ones: it
#   runs the tests that call compiled code in-process and those that start an mcplb
#   process. A test that reaches compiled code only through the config loader (which
#   imports the strategy registry) runs in the pure pass only: config, schema, docs.
# - The "interop" tests run once, in the compiled pass (the build the image and the wheel
#   ship), and not in the pure pass.
# - Both passes run under pytest-xdist (TEST_WORKERS workers; the tests mostly wait on
#   sockets and subprocesses; every port is picked by the kernel, every file is under the
#   test's tmp_path). The "timing" tests then run alone, one after the other, so that no
#   other test shares the machine with them; the benchmarks and the perf gate run last,
#   alone, once (make test-bench).
# - Every test runs at least once: pure = not bench, not interop; compiled = (compiled or
#   interop), not bench; bench = bench.
#
#   make check   ruff, mypy and the tests that start no process: the inner loop, no
#                service, no Node, no compiled build, in two shards (MCPLB_TEST_TIER=check
#                makes a test that starts a process anyway fail, naming itself)
#   make test    what .ci/run runs: side by side lint, mypy, the pure pass and the mypyc
#                build (TEST_JOBS at once); then the pure pass's "timing" tests alone; the
#                compiled pass (parallel, then its "timing" tests alone); then the
#                benchmarks and the perf gate once, alone, on the compiled build
PYTEST := $(PY) -m pytest -q
TEST_JOBS ?= 4
TEST_WORKERS ?= 4
XDIST := -n $(TEST_WORKERS) --dist loadgroup
PURE_TESTS := not bench and not interop
COMPILED_TESTS := (compiled or interop) and not bench

# Python writes its bytecode caches: every proxy and backend a test starts imports the tree
# again, and pytest keeps its rewritten test modules (some environments turn this off).
unexport PYTHONDONTWRITEBYTECODE

check: $(STAMP)
	@$(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck test-fast

# In two halves side by side (--shard, tests/conftest.py): the machine has two cores.
test-fast: test-fast-1 test-fast-2

test-fast-%: $(STAMP)
	MCPLB_TEST_TIER=check $(PYTEST) -m "not process and not bench" --shard $*/2

test: $(STAMP) system-deps node-deps bench-tools
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target \
		lint typecheck test-pure-parallel compiled
	@$(MAKE) --no-print-directory test-pure-timing
	@$(MAKE) --no-print-directory test-compiled
	@$(MAKE) --no-print-directory test-bench

test-pure: test-pure-parallel
	@$(MAKE) --no-print-directory test-pure-timing

test-pure-parallel: $(STAMP) system-deps node-deps bench-tools
	$(PYTEST) $(XDIST) -m "$(PURE_TESTS) and not timing"

test-pure-timing: $(STAMP) system-deps node-deps bench-tools
	$(PYTEST) -m "$(PURE_TESTS) and timing"

# The compiled build: a copy of the tree whose request-path modules are compiled with mypyc
# (setup.py) next to their sources, first on PYTHONPATH, so that the tests and every process
# they start import the compiled ones. The sources stay pure Python for everyone else. Needs
# a C compiler (gcc, present on these machines). Built again only when a compiled source
# (setup.py's COMPILED names: "proxy/relay/http11", ...), setup.py or the venv changed; the
# copy's other files are refreshed before each run.
COMPILED := build/compiled
COMPILED_SOURCES := $(patsubst %,%.py,$(shell sed -n 's/^ *"\([a-z_]*\(\/[a-z_0-9]*\)*\)",$$/\1/p' setup.py))
COMPILED_STAMP := $(COMPILED)/.built

$(COMPILED_STAMP): $(STAMP) setup.py pyproject.toml mcplb/__init__.py $(COMPILED_SOURCES)
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	git ls-files -co --exclude-standard | grep -v '^build/' | tar cf - -T - | tar xf - -C $(COMPILED)
	cd $(COMPILED) && MCPLB_MYPYC=1 $(CURDIR)/$(PY) setup.py --quiet build_ext --inplace >build.log 2>&1 \
		|| { tail -30 build.log; exit 1; }
	touch $@

compiled: $(COMPILED_STAMP)

compiled-tree: $(COMPILED_STAMP)
	rm -rf $(COMPILED)/tests
	git ls-files -co --exclude-standard | grep -v '^build/' | tar cf - -T - | tar xf - -C $(COMPILED)
	ln -sfn $(CURDIR)/$(INTEROP)/node_modules $(COMPILED)/$(INTEROP)/node_modules

# test_deploy.py is left out there: it reads the Docker build context from git, and the
# copy is no checkout (nothing in it runs the compiled modules).
RUN_COMPILED := cd $(COMPILED) && MCPLB_BUILD=compiled PYTHONPATH=$(CURDIR)/$(COMPILED) \
	$(CURDIR)/$(PYTEST)

test-compiled: compiled-tree system-deps node-deps bench-tools
	$(RUN_COMPILED) $(XDIST) -m "$(COMPILED_TESTS) and not timing" --ignore=tests/test_deploy.py
	$(RUN_COMPILED) -m "$(COMPILED_TESTS) and timing" --ignore=tests/test_deploy.py

test-bench: compiled-tree bench-tools
	$(RUN_COMPILED) -m bench

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

# Open-loop latency at 5,000 req/s beside HAProxy (about 2 minutes).
bench-latency: $(STAMP) bench-tools
	$(PY) bench/latency_bench.py

# Cost as the work grows: 2/100/1,000 backends per strategy, a million sessions, 9,500
# event streams, 1,000 probed backends (about 10 minutes).
bench-scale: $(STAMP)
	$(PY) bench/scale_bench.py backends
	$(PY) bench/scale_bench.py sessions
	$(PY) bench/scale_bench.py streams --streams 9500
	$(PY) bench/scale_bench.py health

# The mixed-era soak (about 11 minutes): 2 replicas x 2 workers, Redis behind Sentinel, auth,
# DNS discovery, 2025 and 2026 MCP traffic of every kind, and a fault of each kind
# (bench/soak.py's docstring; the figures are in docs/deploy.md).
soak: $(STAMP) system-deps node-deps
	$(PY) bench/soak.py --mixed --duration 600 --clients 16

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache $(INTEROP)/node_modules

# The config's JSON Schema, generated from the schema in code (proxy/config/json_schema.py);
# tests/test_json_schema.py fails while the committed file is stale.
.PHONY: schema
schema: $(STAMP)
	$(PY) -m mcplb.proxy.cli schema > mcplb.schema.json.tmp
	mv mcplb.schema.json.tmp mcplb.schema.json

# Wheels in dist/: `make wheel` the compiled build (the request path compiled with mypyc:
# mcplb-*-cp3*-linux_*.whl; without a C compiler setup.py says so and builds pure),
# `make wheel-pure` the pure-Python reference (mcplb-*-py3-none-any.whl). Each prints the
# line setup.py said, if any, and which build it made; `mcplb --version` of an installed
# copy says it too. build/lib* is removed first: setuptools would put a previous build's
# compiled modules in a pure wheel. pip's output goes to build/wheel.log.
WHEEL_CLEAN := rm -rf build/lib.* build/temp.* build/bdist.* && mkdir -p build
WHEEL_BUILD := $(PY) -m pip wheel -v --no-build-isolation --no-deps --wheel-dir dist . >build/wheel.log 2>&1 \
	|| { tail -30 build/wheel.log; exit 1; }; sed -n 's/^ *\(mcplb: .*\)/\1/p' build/wheel.log
WHEEL_SAYS := $(PY) -c 'import sys, zipfile; w = sys.argv[1]; n = sum(x.endswith(".so") and "native__mypyc" not in x for x in zipfile.ZipFile(w).namelist()); print(w + ": " + (f"compiled ({n} modules)" if n else "pure Python"))'

.PHONY: wheel wheel-pure
wheel: $(STAMP)
	rm -f dist/mcplb-*.whl && $(WHEEL_CLEAN)
	export MCPLB_MYPYC=1 && $(WHEEL_BUILD)
	@for w in dist/mcplb-*.whl; do $(WHEEL_SAYS) $$w; done

wheel-pure: $(STAMP)
	rm -f dist/mcplb-*-none-any.whl && $(WHEEL_CLEAN)
	unset MCPLB_MYPYC && $(WHEEL_BUILD)
	@$(WHEEL_SAYS) dist/mcplb-*-none-any.whl
