"""config.example.yaml lists every key the loader accepts, each with its default or
"required" in a comment. The key list is derived from the schema's declarations
(``schema_keys``). What the loader really reads (every ``Section`` it builds names its path
and its keys) is checked against the dataclasses' own fields, so that a field added to a
dataclass without a key declaration fails here."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcplb.proxy.config import fields
from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.fields import schema_keys
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"
MAX_ROUNDS = 10  # each round finds the sections one level deeper; the schema has fewer


def accepted_keys() -> dict[str, tuple[str, ...]]:
    """Every section of the schema by dotted path ("" for the top, list indexes left out:
    "backends"), with its keys, as the dataclass declarations say."""
    return schema_keys(Config)


def loader_sections(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, ...]]:
    """Every mapping the loader reads, by dotted path, with its keys. The loader is fed
    documents in which every key it named so far holds a mapping, then a list of one
    mapping, until no new mapping shows: then each section it reads has been reached
    (sections reached only through a particular scalar value would be missed; there are
    none)."""
    sections: dict[str, tuple[str, ...]] = {}
    original = fields.Section.__init__
    signature = inspect.signature(original)

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs).arguments
        sections.setdefault(re.sub(r"\[\d+\]", "", bound["path"]), tuple(bound["keys"]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(fields.Section, "__init__", recording)
    for _ in range(MAX_ROUNDS):
        known = len(sections)
        for filler in ({}, [{}]):
            document = yaml.safe_dump(_filled("", sections, filler))
            # The fillers are mostly wrong values: only the sections read count.
            with contextlib.suppress(ConfigError):
                parse_config(document, environ={})
        if len(sections) == known:
            return sections
    raise AssertionError(f"the schema kept growing after {MAX_ROUNDS} rounds: {sections}")


def _filled(path: str, sections: Mapping[str, tuple[str, ...]], filler: object) -> Any:
    if path not in sections:
        return filler if isinstance(filler, dict) else [{}]
    return {key: _filled(_join(path, key), sections, filler) for key in sections[path]}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# A key as the example writes it, set or commented out ("# key:", "#   key:"), possibly as
# the first key of a list item ("- key:"). The first "# " of a line takes no room: a
# commented-out block keeps the indentation it would have.
_LINE = re.compile(r"(?P<lead> *)(?:# ?)?(?P<body>.*)")
_KEY = re.compile(r"(?P<indent> *)(?P<dash>- )?(?P<key>[a-z_][a-z0-9_]*):(?: |$)")


def example_keys(text: str) -> dict[str, int]:
    """Dotted path -> index of the first line mentioning it, for every key the example sets
    or shows commented out (its nesting read from the indentation, as YAML would)."""
    found: dict[str, int] = {}
    stack: list[tuple[int, str]] = []  # (indentation, path) of the enclosing keys
    for index, line in enumerate(text.splitlines()):
        outer = _LINE.fullmatch(line)
        assert outer is not None
        body = outer["body"]
        inner = re.fullmatch(r"( *)# ?(.*)", body)
        if inner is not None:  # commented out twice ("#   # path: /healthz"): still a key
            body = inner[1] + inner[2]
        match = _KEY.match(body)
        if match is None:
            continue
        indent = len(outer["lead"]) + len(match["indent"]) + (2 if match["dash"] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = _join(stack[-1][1] if stack else "", match["key"])
        stack.append((indent, path))
        found.setdefault(path, index)
    return found


def _documentation(lines: list[str], index: int) -> Iterator[str]:
    """The comment block just above line ``index``, the line, and the deeper comment lines
    right below it (a key described in a comment that continues on the next lines)."""
    above = index
    while above > 0 and lines[above - 1].lstrip().startswith("#"):
        above -= 1
    yield from lines[above : index + 1]
    depth = len(lines[index]) - len(lines[index].lstrip(" #"))
    for line in lines[index + 1 :]:
        if not line.lstrip().startswith("#") or len(line) - len(line.lstrip(" #")) <= depth:
            return
        yield line


# The dataclass fields that are not a YAML key of their own name: filled by the loader
# (source, lines, warnings), read from one key with others (listen: "host:port"; a
# backend's url), or read from a key of another name. Anything else must be a key.
NOT_KEYS = {("Config", "source"), ("Config", "lines"), ("Config", "warnings")}
KEY_OF_FIELD = {
    ("Config", "listen_host"): "listen",
    ("Config", "listen_port"): "listen",
    ("AdminConfig", "listen_host"): "listen",
    ("AdminConfig", "listen_port"): "listen",
    **{("BackendConfig", f): "url" for f in ("scheme", "host", "port", "path_prefix")},
    ("RateLimitConfig", "header"): "key",
    ("DnsDiscoveryConfig", "path_prefix"): "path",
}


def dataclass_sections(cls: type, path: str = "") -> dict[str, set[str]]:
    """Dotted path -> YAML keys, read from the dataclasses themselves (``dataclasses.fields``
    and their types: a field whose type is a dataclass, optional or a tuple of them, is a
    section), independently of the schema's key declarations."""
    found: dict[str, set[str]] = {path: set()}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if (cls.__name__, field.name) in NOT_KEYS:
            continue
        key = KEY_OF_FIELD.get((cls.__name__, field.name), field.name)
        found[path].add(key)
        for section in _dataclasses_in(hints[field.name]):
            found.update(dataclass_sections(section, _join(path, key)))
    return found


def _dataclasses_in(hint: Any) -> list[type]:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return [hint]
    return [found for arg in typing.get_args(hint) for found in _dataclasses_in(arg)]


def test_the_loader_reads_exactly_the_dataclass_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every section the loader reads takes exactly the keys its dataclass has fields for
    (a field the YAML cannot set, or a key with no field, fails here; a field that is no
    key of its own name belongs in NOT_KEYS or KEY_OF_FIELD above)."""
    read = {path: set(keys) for path, keys in loader_sections(monkeypatch).items()}
    assert read == dataclass_sections(Config)


def test_the_schema_walk_finds_the_known_sections() -> None:
    """Guards the walk itself: nested, optional and list sections are reached."""
    sections = accepted_keys()
    for path in ("", "backends", "sticky.cookie", "rate_limit.redis", "health.active", "admin"):
        assert path in sections, path
    assert "url" in sections["backends"]
    assert "listen" in sections["admin"]


def test_the_example_lists_every_accepted_key() -> None:
    mentioned = example_keys(EXAMPLE.read_text())
    missing = [
        _join(path, key)
        for path, keys in accepted_keys().items()
        for key in keys
        if _join(path, key) not in mentioned
    ]
    assert missing == [], f"config.example.yaml lacks {missing}: add each with a comment"


def test_every_key_in_the_example_says_its_default() -> None:
    lines = EXAMPLE.read_text().splitlines()
    mentioned = example_keys("\n".join(lines))
    undocumented = []
    for path, keys in accepted_keys().items():
        for key in keys:
            index = mentioned.get(_join(path, key))
            if index is None:
                continue  # reported by the test above
            doc = "\n".join(_documentation(lines, index))
            if not re.search(r"\b(default|required)\b", doc, re.IGNORECASE):
                undocumented.append(f"{_join(path, key)} (line {index + 1})")
    assert undocumented == [], f'say "Default ..." or "required" for {undocumented}'


def test_a_missing_key_is_caught() -> None:
    """The check can fail: the example without its timeouts.grace line misses that key."""
    text = EXAMPLE.read_text()
    assert re.search(r"^  grace: ", text, re.MULTILINE)
    without = re.sub(r"^  grace: .*\n", "", text, flags=re.MULTILINE)
    assert "timeouts.grace" in example_keys(text)
    assert "timeouts.grace" not in example_keys(without)
    sections = accepted_keys()
    assert "grace" in sections["timeouts"]
