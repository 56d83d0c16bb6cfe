"""Optional compiled build: ``MCPLB_MYPYC=1`` compiles the request path with mypyc.

Everything else about the package is in pyproject.toml. The pure-Python modules stay the
reference and the fallback: without the variable nothing is compiled, and with it but
without mypy or a working C compiler the build says so in one line and goes on pure (an
install never fails for want of a compiler). ``mcplb --version`` says which build runs.

    make wheel          # dist/mcplb-*.whl, compiled (make wheel-pure: the pure one)
    pip install '.[compile]' && MCPLB_MYPYC=1 pip install --no-build-isolation .
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

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
        "proxy/relay/flow",
        "proxy/relay/keepalive",
        "proxy/relay/client_side",
        "proxy/relay/affinity",
        "proxy/relay/shared",
        "proxy/relay/reply",
        "proxy/relay/response",
        "proxy/relay/exchange",
        "proxy/relay/route",
        "proxy/relay/request_buffer",
        "proxy/relay/connection",
        "proxy/cluster/pool",
        "proxy/cluster/backends",
        "proxy/cluster/admission",
        "proxy/cluster/cluster",
        "proxy/cluster/retry_budget",
        "proxy/routing/frontend",
        "proxy/routing/connection_caps",
        "proxy/routing/body_pace",
        "proxy/auth/edge",
        "proxy/auth/tokens",
        "proxy/auth/keys",
        "proxy/routing/steps",
        "proxy/routing/host_check",
        "proxy/routing/retries",
        "proxy/routing/mcp_era",
        "proxy/routing/mcp_tasks",
        "proxy/sessions/affinity",
        "proxy/observability/stats",
        "proxy/observability/access_log",
        "proxy/observability/tracing",
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

FALLBACK = "mcplb: {why}: building the pure-Python modules instead (mcplb --version says so)"


def missing_compiler() -> str | None:
    """Why no C compiler can build the extensions here, or None: the compiler setuptools
    would run (CC, else the one Python was built with) must be on PATH or a file."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    program = command.split()[0]
    if shutil.which(program) is None:
        return f"no C compiler found (CC={command!r})"
    return None


# Why the compiled build was asked for and not made, said once by the command that builds
# (pip runs this file once per build hook: the line is not repeated for each).
fallback: list[str] = []


def note_fallback() -> None:
    # stderr, one line: pip shows it with -v; `make wheel` and the Dockerfile say the
    # build they made anyway (from the wheel's contents, from mcplb --version).
    if fallback:
        print(FALLBACK.format(why=fallback.pop()), file=sys.stderr, flush=True)


class BuildPy(build_py):
    def run(self) -> None:
        note_fallback()
        super().run()


class BuildExt(build_ext):
    """A compile or link error (a broken compiler, missing Python headers) falls back to
    the pure modules too: the extensions are dropped, the .py files are all there."""

    def run(self) -> None:
        note_fallback()
        try:
            super().run()
        except Exception as exc:  # setuptools' CompileError, LinkError, ExecError ...
            fallback.append(f"the compiled build failed ({type(exc).__name__}: {exc})")
            note_fallback()
            self.extensions = []
            self.distribution.ext_modules = []


def extensions() -> list[object]:
    if os.environ.get("MCPLB_MYPYC") != "1":
        return []
    why = missing_compiler()
    if why is None:
        try:
            from mypyc.build import mypycify
        except ImportError:
            why = "mypy is not installed in the build environment"
    if why is not None:
        fallback.append(why)
        return []
    # group_name: mypyc's shared library becomes mcplb/native__mypyc.*.so, inside the
    # package (by default it is a top-level module with a hash for a name).
    try:
        return list(mypycify(COMPILED, opt_level="3", group_name="mcplb.native"))
    except SystemExit as exc:  # mypy's errors, printed above (missing stubs: [compile] extra)
        fallback.append(f"mypyc stopped ({exc.code}): is the 'compile' extra installed?")
        return []


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPy, "build_ext": BuildExt})
