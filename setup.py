"""Optional compiled build: ``MCPLB_MYPYC=1`` compiles the request path with mypyc.

Everything else about the package is in pyproject.toml. The pure-Python modules stay the
reference and the fallback: without the variable (or without a C compiler and mypy in the
build environment) nothing is compiled. ``mcplb --version`` says which build is running.

    pip install mypy && MCPLB_MYPYC=1 pip install --no-build-isolation .
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules on the path of every request, as files under the package's own names
# (mcplb/ links to the top-level folders, so mypyc names the modules mcplb.proxy.*).
# mcplb.proxy.cli.build() reports which of them are compiled.
COMPILED = [
    f"mcplb/{name}.py"
    for name in (
        "proxy/relay/http11",
        "proxy/relay/request",
        "proxy/relay/states",
        "proxy/relay/answers",
        "proxy/relay/framing",
        "proxy/relay/mcp_method",
        "proxy/relay/affinity",
        "proxy/relay/exchange",
        "proxy/relay/route",
        "proxy/relay/upstream",
        "proxy/relay/connection",
        "proxy/cluster/pool",
        "proxy/cluster/backends",
        "proxy/cluster/admission",
        "proxy/cluster/cluster",
        "proxy/routing/steps",
        "proxy/routing/host_check",
        "proxy/routing/retries",
        "proxy/sessions/affinity",
        "proxy/observability/stats",
        "proxy/observability/access_log",
        "proxy/server/runtime",
        "healthcheck/state",
        "healthcheck/monitor",
        # The built-in strategies: Strategy and each built-in class allow interpreted
        # subclasses (mypyc_attr), so plugin strategies still subclass them.
        "strategies/base",
        "strategies/_options",
        "strategies/forwarded",
        "strategies/maglev",
        "strategies/round_robin",
        "strategies/random_choice",
        "strategies/power_of_two",
        "strategies/least_loaded",
        "strategies/least_connections",
        "strategies/least_sessions",
        "strategies/ip_hash",
    )
]

ext_modules = []
if os.environ.get("MCPLB_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)
