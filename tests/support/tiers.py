"""The suite's tiers, derived from what each test reaches: never a hand-kept list.

tests/conftest.py puts these markers on every collected test (docs/testing.md says which
pass runs what, and why):

``process``   the test starts a process: a proxy or a backend as a subprocess, any program
              (git, pip, promtool...), or a service below. `make check` runs the tests
              without it: in-process tests only, no service, no compiled build.
``service``   the test needs a program this machine may lack: it reaches a support module
              that declares ``SERVICE = "<program>"`` (redis-server, prometheus, dnsmasq,
              Node), or bench/ (wrk, HAProxy, nginx).
``bench``     the test runs a benchmark or the performance gate: it reaches bench/. They run
              once, in `make test-bench`, not in each build's pass.
``compiled``  the test runs compiled code, so the compiled pass (`make test-compiled`) runs
              it to prove the mypyc build behaves as the pure one: (a) in-process, its module
              imports a module that setup.py compiles (directly or through other modules, but
              not through the config loader: see LOADER_ONLY), or a fixture or helper it
              reaches is defined in such a module (the sans-IO harness, an in-process proxy);
              or (b) it starts a proxy process (``python -m`` the CLI, the console script),
              itself or through a script of bench/ or tests/ it runs by path.
``interop``   the test's subject is a peer's protocol and it is heavy: it reaches a helper in
              ONCE_HELPERS (the Node/TypeScript SDKs, the conformance suite, the OpenID
              provider: tests/interop; Redis Sentinel), or runs a script that imports one (the
              soak). It runs once, in the compiled pass (the build the image and the wheel
              ship), and not in the pure pass.
``builds``    the test builds mcplb itself (it names BUILDS_ITSELF: a wheel, the Dockerfile's
              stages): not in the compiled pass, and first in its pass's order.
``timing``    the test's own code (its function, class, and the fixtures and helpers of its
              module it reaches) reads the monotonic clock to assert how long something took,
              or it fails a Redis master over (TIMING_HELPERS). Under pytest-xdist the
              passes run these alone, one after the other, after the others.

What a test *reaches* is found by following names, not by running it: the global names,
attribute names and string constants of its function, of its class, of every fixture it
requests (directly or not) and of its parameters' values, followed through the functions
and classes of tests/ they name and through the values of module-level constants. A class
of tests/ contributes its special methods, and each other attribute once reached code uses
its name. A name is followed wherever it is used, as a global or as an attribute: the
answer may be too large, not too small. A module's imports are read from its source with
``ast`` (importing a module imports its packages' ``__init__`` too).

A test that a mistake here would let into `make check` while it starts a process fails
there instead of passing by luck: under ``MCPLB_TEST_TIER=check`` the support modules'
``require(program)`` and an audit hook on process creation raise an error naming the test.
"""

from __future__ import annotations

import ast
import contextlib
import dis
import functools
import os
import re
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIER_VARIABLE = "MCPLB_TEST_TIER"  # "check": `make check`, where no service may start
# Packages whose sources are read to follow imports (mcplb/ links to proxy/, strategies/
# and healthcheck/); anything else is a third-party or standard module, not followed.
OWN_PACKAGES = ("mcplb", "tests", "bench")
# What starts a proxy process: the module ``mcplb run`` is, and the console script.
STARTS_PROXY = re.compile(r"\bmcplb\.proxy\.cli\b|\bbin/mcplb\b")
# The config loader: it imports the strategy registry (to check a strategy's name and
# options), and through it the compiled strategies. A test that reaches compiled code only
# through these modules tests the loader (config, schema, docs, the example file), which is
# the same pure Python in both builds: it runs in the pure pass only. Imports are not
# followed out of them.
LOADER_ONLY = ("mcplb.proxy.config",)
# Helpers whose subject is a peer's protocol, heavy to run (Node, the conformance suite, an
# OpenID provider, three sentinels and two Redis servers): a test that reaches one runs once,
# in the compiled pass.
ONCE_HELPERS = ("tests.interop", "tests.support.redis_sentinel")
# The switch of setup.py's mypyc build: a test that names it builds mcplb itself (a wheel,
# the Dockerfile's stages) and runs what it built, whatever the pass's build is. Running it
# in the compiled pass too would prove nothing more and cost another mypyc build (about 3
# core-minutes): it runs in the pure pass only.
BUILDS_ITSELF = "MCPLB_MYPYC"
# A Redis master failover: the sentinels' timing (down-after 400 ms) and the windows the
# tests measure around it. With CLOCKS, what makes a test "timing": it runs alone.
TIMING_HELPERS = ("tests.support.redis_sentinel",)
# The clocks a test reads to assert how long something took, as attributes
# (time.monotonic(), loop.time(), time.perf_counter()...).
CLOCKS = frozenset({"monotonic", "perf_counter", "monotonic_ns", "perf_counter_ns", "time"})
# Where a script run by path (``ROOT / "bench" / "soak.py"``) is looked for.
SCRIPT_FOLDERS = ("", "bench", "tests", "tests/interop", "tests/support")


class NotInThisTier(AssertionError):
    """A test started a process in `make check`: the derivation here missed it."""


def _refuse(what: str) -> None:
    if os.environ.get(TIER_VARIABLE) == "check":
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        raise NotInThisTier(
            f"{test} starts {what} under `make check`, which starts no process: "
            "tests/support/tiers.py did not mark it"
        )


def require(program: str) -> None:
    """Called by support modules before they start ``program``: an error in `make check`."""
    _refuse(program)


PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.fork", "os.system"})


def refuse_processes(event: str, args: tuple[object, ...]) -> None:
    """An audit hook (sys.addaudithook) for `make check`: no process may start. (uvloop's
    subprocesses raise no audit event: ``require`` covers the Node ones.)"""
    if event in PROCESS_EVENTS:
        _refuse(f"a process ({event} {str(args[0])[:80]})")


# --- what setup.py compiles, and the import graph of our own modules -------------------


@functools.cache
def compiled_modules() -> frozenset[str]:
    """setup.py's COMPILED list as module names ("mcplb.proxy.relay.http11", ...)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets)
            and isinstance(node.value, ast.ListComp)
        ):
            names = ast.literal_eval(node.value.generators[0].iter)
            return frozenset("mcplb." + name.replace("/", ".") for name in names)
    raise AssertionError("setup.py has no COMPILED = [... for name in (...)] list")


def source_of(module: str) -> Path | None:
    """The source file of one of our modules (a package: its __init__.py), or None."""
    if module.split(".")[0] not in OWN_PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


@functools.cache
def imports_of(module: str) -> frozenset[str]:
    """The modules of ours that importing ``module`` imports itself (one step)."""
    path = source_of(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.update(_with_parents(base))
            # ``from package import module`` imports the submodule too.
            found.update(
                f"{base}.{alias.name}"
                for alias in node.names
                if source_of(f"{base}.{alias.name}") is not None
            )
    return frozenset(name for name in found if source_of(name) is not None)


@functools.cache
def import_closure(module: str) -> frozenset[str]:
    """Every module of ours that importing ``module`` loads, ``module`` and parents included."""
    seen: set[str] = set()
    todo = [name for name in _with_parents(module) if source_of(name) is not None]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports_of(name) - seen)
    return frozenset(seen)


def _within(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@functools.cache
def runtime_closure(module: str) -> frozenset[str]:
    """Like import_closure, but imports are not followed out of the config loader
    (LOADER_ONLY): the modules whose code a test importing ``module`` may run."""
    seen: set[str] = set()
    todo = [name for name in _with_parents(module) if source_of(name) is not None]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            if not _within(name, LOADER_ONLY):
                todo.extend(imports_of(name) - seen)
    return frozenset(seen)


@functools.cache
def module_reaches_compiled(module: str) -> bool:
    """Importing ``module`` loads a compiled module other than through the config loader."""
    return not compiled_modules().isdisjoint(runtime_closure(module))


@functools.cache
def script_module(text: str) -> str | None:
    """The module of ours a string names as a script run by path ("soak.py" of bench/,
    "bench/cpu_gate.py"...), or None."""
    if not text.endswith(".py") or len(text) > 200:
        return None
    for folder in SCRIPT_FOLDERS:
        path = ROOT / folder / text
        if path.is_file() and path.resolve().is_relative_to(ROOT):
            parts = path.resolve().relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts)
            return module if source_of(module) is not None else None
    return None


@functools.cache
def script_starts_proxy(module: str) -> bool:
    """Running ``module`` as a script starts a proxy, or runs compiled code."""
    return module_reaches_compiled(module) or any(
        _starts_proxy(name) for name in import_closure(module)
    )


@functools.cache
def _starts_proxy(module: str) -> bool:
    """A module of tests/ or bench/ whose source names what starts a proxy process."""
    path = source_of(module)
    if path is None or module == __name__ or not module.startswith(("tests.", "bench.")):
        return False  # (this module holds the pattern, not a use of it)
    return STARTS_PROXY.search(path.read_text()) is not None


# --- what a test reaches, by name -------------------------------------------------------

# Calls that start a process, as attribute names (``asyncio.create_subprocess_exec``...);
# the subprocess module is enough by itself.
PROCESS_CALLS = frozenset(
    {"create_subprocess_exec", "create_subprocess_shell", "fork", "forkpty", "posix_spawn"}
)


_TRIVIAL = bool | int | float | type(None)  # nothing to follow, nothing to tell


def _is_ours(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] == "tests"  # type: ignore[union-attr]


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


@functools.cache
def _edges(function: types.FunctionType) -> tuple[list[object], frozenset[str], frozenset[str]]:
    """What ``function`` names: the objects (globals, closure cells, defaults), its string
    constants, and every name its code uses (global and attribute names alike)."""
    objects: list[object] = []
    strings: set[str] = set()
    names: set[str] = set()
    for code in _codes(function.__code__):
        names.update(code.co_names)
        objects.extend(
            value
            for n in code.co_names
            if not isinstance(value := function.__globals__.get(n), _TRIVIAL)
        )
        strings.update(c for c in code.co_consts if isinstance(c, str))
    for cell in function.__closure__ or ():
        with contextlib.suppress(ValueError):  # empty: a name not yet assigned
            objects.append(cell.cell_contents)
    objects.extend(function.__defaults__ or ())
    objects.extend((function.__kwdefaults__ or {}).values())
    return objects, frozenset(strings), frozenset(names)


@functools.cache
def _clocks_read(function: types.FunctionType) -> frozenset[str]:
    """The clocks of CLOCKS that ``function`` reads as an attribute (``loop.time()``; the
    module ``time`` itself, a global, is not a clock)."""
    return frozenset(
        instruction.argval
        for code in _codes(function.__code__)
        for instruction in dis.get_instructions(code)
        if instruction.opname in ("LOAD_ATTR", "LOAD_METHOD") and instruction.argval in CLOCKS
    )


class Reach:
    """The modules, strings and names reachable from some roots (functions, classes,
    values). A class of tests/ contributes its special methods at once and each other
    attribute once some reached code uses its name (``peers.backend(...)`` reaches
    ``Peers.backend``, not ``Peers.proxy``)."""

    def __init__(self, roots: Iterable[object], home: str = "", base: Reach | None = None) -> None:
        """``base``: a Reach already walked from other roots, taken as the start (the
        answer is the same as from all the roots at once: the walk is a closure)."""
        self.modules: set[str] = set(base.modules) if base else set()
        self.strings: set[str] = set(base.strings) if base else set()
        self.names: set[str] = set(base.names) if base else set()
        self.home = home  # the test's module: the clocks its own code reads, in home_names
        self.home_names: set[str] = set()
        # attributes of reached classes, by name
        self._waiting: dict[str, list[object]] = (
            {name: list(values) for name, values in base._waiting.items()} if base else {}
        )
        self._seen: set[int] = set(base._seen) if base else set()
        self._services: set[str] | None = None
        self._todo = list(roots)
        while self._todo:
            self._visit(self._todo.pop())

    def _use(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.names:
                self.names.add(name)
                self._todo.extend(self._waiting.pop(name, ()))

    def _visit(self, obj: object) -> None:
        if id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        if isinstance(obj, str):
            self.strings.add(obj)
        elif isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__)
        elif isinstance(obj, list | tuple | set | frozenset):
            self._todo.extend(obj)
        elif isinstance(obj, dict):
            self._todo.extend(obj.keys())
            self._todo.extend(obj.values())
        elif isinstance(obj, functools.partial):
            self._todo.extend([obj.func, *obj.args, *obj.keywords.values()])
        elif isinstance(obj, types.MethodType | staticmethod | classmethod):
            self._todo.append(obj.__func__)
        elif isinstance(obj, property):
            self._todo.extend([obj.fget, obj.fset, obj.fdel])
        elif isinstance(obj, types.FunctionType):
            self.modules.add(obj.__module__)
            if _is_ours(obj.__module__):
                objects, strings, names = _edges(obj)
                self._todo.extend(objects)
                self.strings.update(strings)
                self._use(names)
                if obj.__module__ == self.home:
                    self.home_names.update(_clocks_read(obj))
        elif isinstance(obj, type):
            self.modules.add(obj.__module__)
            if _is_ours(obj.__module__):
                for name, value in vars(obj).items():
                    special = name.startswith("__") and name.endswith("__")
                    if special or name in self.names:
                        self._todo.append(value)
                    else:
                        self._waiting.setdefault(name, []).append(value)
                self._todo.extend(obj.__bases__)
        elif obj is not None:
            module = getattr(type(obj), "__module__", None)
            if isinstance(module, str):
                self.modules.add(module)

    def services(self) -> set[str]:
        """The programs needed: SERVICE of the modules whose objects were reached (their
        functions, classes and module-level values: ``NODE``, a path, counts as Node)."""
        if self._services is None:
            found = {service for name in self.modules if (service := _service_of(name))}
            values = _service_values()
            found.update(values[key] for key in self._seen & values.keys())
            if self.bench():
                found.add("bench")
            self._services = found
        return self._services

    def process(self) -> bool:
        """A process is started: an external program, or any subprocess."""
        return (
            bool(self.services())
            or "subprocess" in self.modules
            or not PROCESS_CALLS.isdisjoint(self.names)
        )

    def bench(self) -> bool:
        return any(name.split(".")[0] == "bench" for name in self.modules) or any(
            "bench/" in text for text in self.strings
        )

    def scripts(self) -> set[str]:
        """The modules of ours that reached strings name as scripts run by path."""
        return {module for text in self.strings if (module := script_module(text))}

    def compiled(self) -> bool:
        """A proxy process is started (a reached string names the CLI, or a script run by
        path starts one), or an object of ours outside tests/ is used whose module loads a
        compiled one other than through the config loader (tests/ functions were followed,
        not their modules); and the test does not build mcplb itself (BUILDS_ITSELF)."""
        if any(BUILDS_ITSELF in text for text in self.strings):
            return False
        return (
            any(STARTS_PROXY.search(text) for text in self.strings)
            or any(module_reaches_compiled(name) for name in self.modules if not _is_ours(name))
            or any(script_starts_proxy(name) for name in self.scripts())
        )

    def timing(self) -> bool:
        """The test's own code (its function, class, and the fixtures and helpers of its
        module that it reaches) reads a clock to see how long something took, or it reaches
        a helper of TIMING_HELPERS (a failover), itself or through a script run by path."""
        return (
            bool(self.home_names)
            or any(_within(name, TIMING_HELPERS) for name in self.modules)
            or any(
                _within(name, TIMING_HELPERS)
                for script in self.scripts()
                for name in import_closure(script)
            )
        )

    def interop(self) -> bool:
        """A helper of ONCE_HELPERS is reached (a function, a class or a module-level value
        of it), or a script run by path imports one."""
        return (
            any(_within(name, ONCE_HELPERS) for name in self.modules)
            or not _once_values().isdisjoint(self._seen)
            or any(
                _within(name, ONCE_HELPERS)
                for script in self.scripts()
                for name in import_closure(script)
            )
        )


def _service_of(module: str) -> str | None:
    service = getattr(sys.modules.get(module), "SERVICE", None)
    return service if isinstance(service, str) else None


def _top_level_values(name: str) -> Iterator[int]:
    """The ids of the values module ``name`` assigns at top level (not the names it
    imports), None, booleans, numbers and identifier-like strings aside."""
    module, path = sys.modules.get(name), source_of(name)
    if module is None or path is None:
        return
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            value = getattr(module, target.id, None) if isinstance(target, ast.Name) else None
            if isinstance(value, bool | int | float | type(None)):
                continue
            if isinstance(value, str) and value.isidentifier():
                continue  # interned: the same object as the same word anywhere
            yield id(value)


@functools.cache
def _service_values() -> dict[int, str]:
    """id -> SERVICE for the values that modules declaring SERVICE assign at top level."""
    found: dict[int, str] = {}
    for name in list(sys.modules):
        if (service := _service_of(name)) is not None:
            found.update(dict.fromkeys(_top_level_values(name), service))
    return found


@functools.cache
def _once_values() -> frozenset[int]:
    """The ids of the values that the modules of ONCE_HELPERS assign at top level."""
    return frozenset(
        value
        for name in list(sys.modules)
        if _within(name, ONCE_HELPERS)
        for value in _top_level_values(name)
    )


def _fixture_functions(item: pytest.Item) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The functions of the fixtures ``item`` uses, directly or not: those of its own module,
    and the others (conftest.py's; pytest's own are followed no further than their name)."""
    own: list[object] = []
    shared: list[object] = []
    info = getattr(item, "_fixtureinfo", None)
    module = getattr(getattr(item, "function", None), "__module__", None)
    for name in getattr(item, "fixturenames", ()) if info is not None else ():
        for fixturedef in info.name2fixturedefs.get(name, ()):
            func = getattr(fixturedef, "func", None)
            if isinstance(func, types.FunctionType):
                (own if func.__module__ == module else shared).append(func)
    return tuple(own), tuple(shared)


@functools.cache
def _shared_reach(shared: tuple[object, ...]) -> Reach:
    """What the fixtures of conftest.py a test uses reach: walked once per set of them,
    then each test's own roots are walked from there."""
    return Reach(shared)


@functools.cache
def _tiers(module: str, roots: tuple[object, ...], shared: tuple[object, ...]) -> frozenset[str]:
    reach = Reach(roots, home=module, base=_shared_reach(shared))
    found = set()
    if reach.services():
        found.add("service")
    if reach.process():
        found.add("process")
    if reach.bench():
        found.add("bench")
    builds_itself = any(BUILDS_ITSELF in text for text in reach.strings)
    if (module_reaches_compiled(module) and not builds_itself) or reach.compiled():
        found.add("compiled")
    if reach.interop():
        found.add("interop")
    if builds_itself:
        found.add("builds")
    if reach.timing():
        found.add("timing")
    return frozenset(found)


def markers(item: pytest.Item) -> list[str]:
    """The tier markers of ``item`` ("bench", "compiled", "interop", "process", "service",
    "timing"),
    from its function, its class, its fixtures and its parameters' values."""
    function = getattr(item, "function", None)
    module = getattr(function, "__module__", "")
    own, shared = _fixture_functions(item)
    cls = getattr(item, "cls", None)
    found = set(_tiers(module, (function, *own, *([cls] if cls else [])), shared))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:  # a parameter may be a function or a class of tests/
        reach = Reach(callspec.params.values())
        found.update(["service", "process"] if reach.services() else [])
        found.update(["process"] if reach.process() else [])
        found.update(["bench"] if reach.bench() else [])
        found.update(["compiled"] if reach.compiled() else [])
        found.update(["interop"] if reach.interop() else [])
    return sorted(found)


def xdist_group(item: pytest.Item) -> str | None:
    """Under pytest-xdist (``--dist loadgroup``), the tests that share a fixture of ours
    wider than one test (scope "module" or "class": servers started once, a summary written
    at teardown) run on one worker, in one group per file: the fixture is set up once, and
    its teardown sees all of them."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in info.name2fixturedefs.get(name, ()):
            func = getattr(fixturedef, "func", None)
            if fixturedef.scope != "function" and _is_ours(getattr(func, "__module__", None)):
                return item.nodeid.split("::")[0]
    return None


class Shard:
    """``--shard K/N``: of the selected tests, only the Kth of every N (a plugin, so that it
    runs after ``-m`` has selected). `make check` runs the N shards side by side."""

    def __init__(self, spec: str) -> None:
        k, n = (int(part) for part in spec.split("/"))
        if not 1 <= k <= n:
            raise pytest.UsageError(f"--shard {spec}: K/N with 1 <= K <= N")
        self.k, self.n = k, n

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        others = [item for i, item in enumerate(items) if i % self.n != self.k - 1]
        config.hook.pytest_deselected(items=others)
        items[:] = items[self.k - 1 :: self.n]
