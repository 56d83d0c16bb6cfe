"""Finds a strategy class by built-in name, entry point, or "package.module:Class" path."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from mcplb.strategies.base import Strategy, StrategyOptionError, unimplemented
from mcplb.strategies.ip_hash import IpHash
from mcplb.strategies.least_connections import LeastConnections
from mcplb.strategies.least_sessions import LeastSessions
from mcplb.strategies.power_of_two import PowerOfTwo
from mcplb.strategies.random_choice import RandomChoice
from mcplb.strategies.round_robin import RoundRobin

BUILTIN: Mapping[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RoundRobin, LeastConnections, PowerOfTwo, RandomChoice, LeastSessions, IpHash)
}
ENTRY_POINT_GROUP = "mcplb.strategies"


class StrategyLoadError(Exception):
    """The strategy named in the config cannot be loaded or built."""


def resolve(spec: str) -> type[Strategy]:
    """Return the class named by ``spec``; raise StrategyLoadError saying why not."""
    if ":" in spec:
        cls = _import_class(spec)
    elif spec in BUILTIN:
        cls = BUILTIN[spec]
    else:
        cls = _from_entry_point(spec)
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise StrategyLoadError(f"{spec!r} is not a subclass of strategies.base.Strategy")
    missing = unimplemented(cls)
    if missing:
        raise StrategyLoadError(f"{spec!r} does not implement {'(), '.join(missing)}()")
    return cls


def build(spec: str, options: Mapping[str, Any]) -> Strategy:
    """Resolve ``spec`` and instantiate it with ``options``."""
    cls = resolve(spec)
    try:
        return cls(**options)
    except StrategyOptionError as exc:
        raise StrategyLoadError(f"{spec}: {exc}") from None
    except TypeError as exc:
        raise StrategyLoadError(f"{spec}: bad options: {exc}") from None


def _import_class(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StrategyLoadError(f"{spec!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a broken plugin must not crash config checking
        raise StrategyLoadError(f"cannot import module {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise StrategyLoadError(f"module {module_name!r} has no attribute {attr!r}") from None


def _from_entry_point(name: str) -> object:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                return entry.load()
            except Exception as exc:  # a broken plugin must not crash config checking
                raise StrategyLoadError(f"entry point {name!r} failed to load: {exc}") from None
    raise StrategyLoadError(unknown_strategy(name))


def unknown_strategy(name: str) -> str:
    """The message for a strategy name that is neither built in nor an entry point: the
    built-in names, and the closest known name when there is one."""
    known = ", ".join(sorted(BUILTIN))
    plugins = [entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)]
    # Compared in lower case with "_" for "-": "Round-Robin" is a near miss of round_robin.
    candidates = {n.lower().replace("-", "_"): n for n in [*BUILTIN, *plugins]}
    close = difflib.get_close_matches(name.lower().replace("-", "_"), candidates, n=1)
    hint = f"did you mean {candidates[close[0]]!r}? " if close else ""
    return f"unknown strategy {name!r} ({hint}built-in: {known})"
