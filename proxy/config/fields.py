"""Config keys declared on dataclass fields, and the one loop that reads any section by them.

A field that is a YAML key carries ``metadata=key(...)`` (or ``items``, ``section``,
``sections``, ``free_mapping``): how its value is checked, its YAML name when that is not the
field's, whether it is required. A section's accepted keys (in field order, as messages list
them), its defaults and its reading all derive from these declarations. What one key cannot
check alone (``timeout`` below ``interval``) is the section's rule: a function given the
section as read (proxy/config/rules.py), found through the ``Context``.

Classes that cannot carry this metadata (the health settings live in ``healthcheck``, which
imports nothing from the proxy) are given theirs with :func:`declare`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from mcplb.proxy.config.errors import ConfigIssue
from mcplb.proxy.config.yaml_tree import INVALID, Entry, Val, join

_T = TypeVar("_T")
KEY: Final = "mcplb.config.key"  # the field metadata entry holding its Key
NO_DEFAULT: Final[Any] = object()  # a Key without a default of its own

Check = Callable[[object], Any]
# Reads a list or mapping value itself (None when absent): (value, path, context, the field's
# default) -> the setting, or INVALID when nothing valid was read (its issues reported).
Reader = Callable[["Val | None", str, "Context", Any], Any]


@dataclass(frozen=True, slots=True)
class Key:
    """How one YAML key is read into its field."""

    check: Check | None = None  # a scalar's check: the setting, or ValueError with the message
    read: Reader | None = None  # a list or mapping: reads the value and reports its issues
    yaml: str | None = None  # the YAML name, when not the field's
    into: tuple[str, ...] = ()  # fields the checked tuple is spread over ("listen": host, port)
    required: bool = False
    default: Any = NO_DEFAULT  # the default when the section is given, if not the field's
    section: type | None = None  # the dataclass a mapping (or each list item) is read as
    always: bool = False  # read also when absent: the section's rule applies to its defaults
    # What the generated JSON Schema (proxy/config/json_schema.py) needs to know of a reader:
    shape: str = "scalar"  # "scalar", "items", "section", "sections" or "mapping"
    item: Check | None = None  # "items": each item's check
    scalar_ok: bool = False  # "items": a single item without brackets is accepted
    empty_ok: bool = False  # "items": [] is accepted
    null_off: bool = False  # "section": null means None
    unless: str | None = None  # required unless this key (of the same mapping) is present


def key(
    check: Check,
    *,
    yaml: str | None = None,
    into: tuple[str, ...] = (),
    required: bool = False,
    default: Any = NO_DEFAULT,
) -> dict[str, Key]:
    """Field metadata for a scalar key checked by ``check``."""
    return {KEY: Key(check=check, yaml=yaml, into=into, required=required, default=default)}


def items(
    check: Check,
    message: str,
    *,
    scalar_ok: bool = False,
    empty_ok: bool = False,
    convert: Callable[[tuple[Any, ...]], Any] = tuple,
) -> dict[str, Key]:
    """Field metadata for a list of scalars, each checked by ``check`` (bad ones reported by
    index); ``message`` when it is no list; ``convert`` makes the field's value of them."""

    def read(val: Val | None, path: str, ctx: Context, default: Any) -> Any:
        found = list_of(
            val, path, ctx.issues, check, message, scalar_ok=scalar_ok, empty_ok=empty_ok
        )
        return INVALID if found is None else convert(found)

    return {KEY: Key(read=read, shape="items", item=check, scalar_ok=scalar_ok, empty_ok=empty_ok)}


def section(cls: type, *, null_off: bool = False, always: bool = False) -> dict[str, Key]:
    """Field metadata for a nested mapping read as ``cls`` (through its rule, if it has one).
    ``null_off``: a null value ("rate_limit:" with its keys commented out) means None."""

    def read(val: Val | None, path: str, ctx: Context, default: Any) -> Any:
        if null_off and (val is None or val.value is None):
            return None
        # A field whose default is not its class's default (rate_limit.redis) gives its own.
        own = isinstance(default, cls) and default != cls()
        return build(cls, val, path, ctx, default if own else None)

    return {KEY: Key(read=read, section=cls, always=always, shape="section", null_off=null_off)}


def sections(
    cls: type, message: str, *, required: bool = False, unless: str | None = None
) -> dict[str, Key]:
    """Field metadata for a non-empty list of mappings each read as ``cls``; the list rule of
    ``cls`` (in the Context) makes the setting of them. ``unless``: the key, beside this one,
    whose presence makes this one optional."""

    def read(val: Val | None, path: str, ctx: Context, default: Any) -> Any:
        if val is None or val.value is INVALID:
            return INVALID
        if not isinstance(val.value, list) or not val.value:
            ctx.issues.append(ConfigIssue(path, message, val.line))
            return INVALID
        reads = [read_section(cls, item, f"{path}[{i}]", ctx) for i, item in enumerate(val.value)]
        return ctx.list_rules[cls](reads, ctx)

    return {KEY: Key(read=read, section=cls, required=required, shape="sections", unless=unless)}


def free_mapping() -> dict[str, Key]:
    """Field metadata for a mapping passed on as plain data (keys must be strings)."""

    def read(val: Val | None, path: str, ctx: Context, default: Any) -> Any:
        if val is None or val.value is None or val.value is INVALID:
            return INVALID
        if not isinstance(val.value, dict):
            ctx.issues.append(ConfigIssue(path, "must be a mapping", val.line))
            return INVALID
        options: dict[str, Any] = {}
        memo: dict[int, Any] = {}
        for name, entry in val.value.items():
            if isinstance(name, str):
                options[name] = _to_python(entry.val, memo)
            else:
                ctx.issues.append(
                    ConfigIssue(join(path, entry.key), "keys must be strings", entry.line)
                )
        return options

    return {KEY: Key(read=read, shape="mapping")}


_declared: dict[type, dict[str, Key]] = {}


def declare(cls: type, **keys: dict[str, Key]) -> None:
    """The keys of a dataclass declared apart from it: field name -> metadata as ``key()``
    makes it. Every field must be named, so that none is forgotten."""
    names = {f.name for f in dataclasses.fields(cls)}
    if set(keys) != names:
        raise TypeError(f"{cls.__name__}: declare every field: {sorted(names ^ set(keys))}")
    _declared[cls] = {name: metadata[KEY] for name, metadata in keys.items()}


@functools.cache
def keys_of(cls: type) -> dict[str, tuple[str, Key]]:
    """YAML name -> (field name, Key) for the fields of ``cls`` that are keys, in field order."""
    found: dict[str, tuple[str, Key]] = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(KEY) or _declared.get(cls, {}).get(f.name)
        if spec is not None:
            found[spec.yaml or f.name] = (f.name, spec)
    return found


def schema_keys(cls: type, path: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted path ("" for ``cls``, list indexes left out) -> accepted keys, of every section."""
    found = {path: tuple(keys_of(cls))}
    for name, (_, spec) in keys_of(cls).items():
        if spec.section is not None:
            found.update(schema_keys(spec.section, join(path, name)))
    return found


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of ``cls``."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


# ---------------------------------------------------------------------------
# Reading


Rule = Callable[["Read", "Context"], Any]  # a section as read -> the setting (or None)
ListRule = Callable[[list["Read"], "Context"], Any]  # the items of a list -> the setting


@dataclass(slots=True)
class Context:
    """What reading a document shares: its issues, the line of each path, the rules."""

    issues: list[ConfigIssue]
    lines: Mapping[str, int]
    rules: Mapping[type, Rule]
    list_rules: Mapping[type, ListRule]
    # The top-level settings read so far, in field order: sticky's default store depends on
    # workers, which comes before it.
    top: dict[str, Any] = field(default_factory=dict)


class Section:
    """One mapping of the schema: rejects unknown keys and notes missing required ones."""

    def __init__(
        self,
        val: Val | None,
        path: str,
        keys: tuple[str, ...],
        issues: list[ConfigIssue],
        required: tuple[str, ...] = (),
    ) -> None:
        self.entries: dict[str, Entry] = {}
        # A section whose keys are all commented out is null in YAML; treat it as empty.
        if val is None or val.value is INVALID or (val.value is None and not required):
            return
        if not isinstance(val.value, dict):
            issues.append(ConfigIssue(path, "must be a mapping", val.line))
            return
        for name, entry in val.value.items():
            if isinstance(name, bool) and entry.key in keys:
                name = entry.key  # YAML 1.1 reads a plain on/off/yes/no key as a boolean
            if isinstance(name, str) and name in keys:
                self.entries[name] = entry
            else:
                message = _unknown_key(entry.key, keys)
                issues.append(ConfigIssue(join(path, entry.key), message, entry.line))
        for name in required:
            if name not in val.value:
                issues.append(ConfigIssue(path, f'missing required key "{name}"', val.line))


@dataclass(slots=True)
class Read:
    """A section as read: for its rule, which checks what one key cannot."""

    path: str
    val: Val | None
    section: Section
    values: dict[str, Any]  # field name -> its value: as read, else its default
    defaults: dict[str, Any]  # field name -> its default (rate_limit.redis has its own)
    given: dict[str, Any]  # YAML name -> value, of the keys present with a valid value

    def valid(self, name: str) -> bool:
        """Whether key ``name`` is absent (its default applies) or was read as valid."""
        return name not in self.section.entries or name in self.given

    def line(self, name: str) -> int | None:
        """The line of key ``name``, if present."""
        entry = self.section.entries.get(name)
        return None if entry is None else entry.line

    def value(self, name: str) -> Val | None:
        """The YAML value of key ``name``, if present."""
        entry = self.section.entries.get(name)
        return None if entry is None else entry.val


def read_section(
    cls: type,
    val: Val | None,
    path: str,
    ctx: Context,
    default: Any = None,
    *,
    required: tuple[str, ...] | None = None,
    values: dict[str, Any] | None = None,
) -> Read:
    """Read ``val`` as a ``cls`` mapping: each key by its declaration, defaults from
    ``default`` (an instance) or the fields. ``required`` overrides the declared required
    keys; ``values`` is the dict to fill (the Context's ``top``)."""
    keys = keys_of(cls)
    if required is None:
        given = val.value if val is not None and isinstance(val.value, dict) else {}
        required = tuple(
            name
            for name, (_, spec) in keys.items()
            if spec.required and (spec.unless is None or spec.unless not in given)
        )
    defaults = _defaults(cls, default)
    if values is None:
        values = dict(defaults)
    else:
        values.update(defaults)
    read = Read(
        path, val, Section(val, path, tuple(keys), ctx.issues, required), values, defaults, {}
    )
    for name, (field_name, spec) in keys.items():
        entry = read.section.entries.get(name)
        value = _read_key(spec, entry, join(path, name), ctx, read.values.get(field_name))
        if value is INVALID:
            continue
        if entry is not None:
            read.given[name] = value
        if spec.into:
            read.values.update(zip(spec.into, value, strict=True))
        else:
            read.values[field_name] = value
    return read


def build(cls: type, val: Val | None, path: str, ctx: Context, default: Any = None) -> Any:
    """The ``cls`` setting of ``val``: read, then made by the section's rule if it has one."""
    read = read_section(cls, val, path, ctx, default)
    rule = ctx.rules.get(cls)
    return cls(**read.values) if rule is None else rule(read, ctx)


def _defaults(cls: type, instance: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    overrides = {field_name: spec.default for field_name, spec in keys_of(cls).values()}
    for f in dataclasses.fields(cls):
        if instance is not None:
            values[f.name] = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            values[f.name] = field_default(cls, f.name)
        if overrides.get(f.name, NO_DEFAULT) is not NO_DEFAULT:
            values[f.name] = overrides[f.name]
    return values


def _read_key(spec: Key, entry: Entry | None, path: str, ctx: Context, default: Any) -> Any:
    if spec.check is not None:
        if entry is None or entry.val.value is INVALID:
            return INVALID
        try:
            return spec.check(entry.val.value)
        except ValueError as exc:
            ctx.issues.append(ConfigIssue(path, str(exc), entry.val.line))
            return INVALID
    if entry is None and not spec.always:
        return INVALID
    assert spec.read is not None, "a Key has a check or a reader"
    return spec.read(None if entry is None else entry.val, path, ctx, default)


def _unknown_key(name: str, keys: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, keys, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return f"unknown key (expected one of: {', '.join(keys)})"


def list_of(
    val: Val | None,
    path: str,
    issues: list[ConfigIssue],
    check: Callable[[object], _T],
    message: str,
    *,
    scalar_ok: bool = False,
    empty_ok: bool = False,
) -> tuple[_T, ...] | None:
    """The checked items of a list value (each bad item reported); None if absent or invalid."""
    if val is None or val.value is INVALID:
        return None
    if isinstance(val.value, list):
        elements = val.value
    elif scalar_ok and val.value is not None and not isinstance(val.value, dict):
        elements = [val]  # a single item written without brackets
    else:
        issues.append(ConfigIssue(path, message, val.line))
        return None
    if not elements and not empty_ok:
        issues.append(ConfigIssue(path, "must not be empty", val.line))
        return None
    result: list[_T] = []
    ok = True
    for index, item in enumerate(elements):
        if item.value is INVALID:
            ok = False
            continue
        try:
            result.append(check(item.value))
        except ValueError as exc:
            issues.append(ConfigIssue(f"{path}[{index}]", str(exc), item.line))
            ok = False
    return tuple(result) if ok else None


def _to_python(val: Val, memo: dict[int, Any]) -> Any:
    """Plain data from a Val tree; values shared through YAML aliases stay shared."""
    if id(val) in memo:
        return memo[id(val)]
    result: Any
    if isinstance(val.value, dict):
        result = {name: _to_python(entry.val, memo) for name, entry in val.value.items()}
    elif isinstance(val.value, list):
        result = [_to_python(item, memo) for item in val.value]
    else:
        result = val.value
    memo[id(val)] = result
    return result
