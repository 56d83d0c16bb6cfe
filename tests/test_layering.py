"""The import graph of the package: data flows one way (config -> runtime state -> policies
-> relay), ``strategies`` and ``healthcheck`` depend on no ``proxy`` module, and no module
imports itself back through others. Every import counts: at the top, under
``if TYPE_CHECKING:`` (a type-only dependency is still one: the module cannot be read or
checked without the other) and inside functions (a deferred import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import mcplb

PACKAGE = Path(mcplb.__file__).resolve().parent


def modules() -> dict[str, Path]:
    found = {}
    for folder in ("proxy", "strategies", "healthcheck"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            parts = ["mcplb", *path.relative_to(PACKAGE).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere: at the top, under ``if
    TYPE_CHECKING:``, inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, set(known)) for name, path in known.items()}


def test_strategies_and_healthcheck_import_no_proxy_module() -> None:
    for name, imports in graph().items():
        if name.startswith(("mcplb.strategies", "mcplb.healthcheck")):
            assert not [i for i in imports if i.startswith("mcplb.proxy")], name
        if name.startswith("mcplb.strategies"):
            assert not [i for i in imports if i.startswith("mcplb.healthcheck")], name


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


# The proxy's sub-packages in the order data flows (config -> runtime state -> policies ->
# relay -> processes): a module imports only from its own sub-package or an earlier one,
# for types too (what a lower layer needs of a higher one, it declares as a Protocol).
LAYERS = [
    "config",
    "observability",
    "redisconn",
    "sessions",
    "cluster",
    "auth",
    "routing",
    "relay",
    "admin",
    "server",
    "demo",
    "cli",
]


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[2])


def test_proxy_sub_packages_depend_only_on_earlier_ones() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        if not name.startswith("mcplb.proxy."):
            continue
        for target in imports(path, set(known)):
            if target.startswith("mcplb.proxy.") and layer(target) > layer(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_type_only_and_deferred_imports_are_counted(tmp_path: Path) -> None:
    """The graph sees an import under TYPE_CHECKING and one inside a function: the two
    kinds the relay's old cycle and worker <-> supervisor hid behind."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from mcplb.proxy.server.runtime import Runtime\n"
        "def f() -> None:\n"
        "    from mcplb.proxy.server import supervisor\n"
    )
    known = {"mcplb.proxy.server.runtime", "mcplb.proxy.server.supervisor"}
    assert imports(source, known) == known


def test_every_proxy_sub_package_has_a_layer() -> None:
    sub_packages = {path.parent.name for path in (PACKAGE / "proxy").glob("*/__init__.py")} | {
        "cli"
    }
    assert sub_packages == set(LAYERS)
