"""YAML text -> a tree of values with line numbers: environment variables expanded, duplicate
keys, aliases and merges handled, every problem an issue with its path and line."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import yaml
from yaml.constructor import SafeConstructor
from yaml.reader import ReaderError
from yaml.resolver import Resolver

from mcplb.proxy.config.checks import kind
from mcplb.proxy.config.errors import ConfigIssue

_ENV_REF = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))?")
_ENV_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def _expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$``; return the text and any errors.

    As in the shell, ``:-`` also applies when VAR is set but empty. A ``$`` followed by
    anything else is kept literally.
    """
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["open"]:
            errors.append('unterminated "${" (write "$$" for a literal "$")')
            return match[0]
        body = match["body"]
        if body is None:
            return "$"
        ref = _ENV_BODY.fullmatch(body)
        if ref is None:
            errors.append(f'invalid variable reference "${{{body}}}"')
            return match[0]
        name, default = ref["name"], ref["default"]
        value = environ.get(name)
        if default is not None and not value:
            return str(default)
        if value is None:
            errors.append(
                f'environment variable "{name}" is not set (use ${{{name}:-default}} for a default)'
            )
            return ""
        return value

    if "$" not in text:
        return text, errors
    return _ENV_REF.sub(replace, text), errors


# ---------------------------------------------------------------------------
# Phase 1: YAML nodes -> values with lines (env expanded, duplicates and aliases handled)

_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# PyYAML resolves plain "=" to this tag but has no constructor for it; it is just text to us.
_VALUE_TAG = "tag:yaml.org,2002:value"
INVALID: Final = object()  # stands for a value already reported as an issue


@dataclass(frozen=True, slots=True)
class Val:
    """A YAML value after env expansion: a scalar, list[Val], dict[key, Entry] or INVALID."""

    value: object
    line: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a mapping: the key as written (for paths), its line, and its value."""

    key: str
    line: int
    val: Val


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org") else tag


def _has_explicit_tag(text: str, node: yaml.Node) -> bool:
    """Whether a plain scalar was written with a tag, e.g. ``!!str ${PORT}``."""
    # The composed node does not say whether its tag was explicit. A plain scalar cannot start
    # with "!" or "&", so leading tokens starting with those are its properties (tag, anchor).
    source = text[node.start_mark.index : node.end_mark.index]
    for token in source.split(maxsplit=2)[:2]:
        if token.startswith("!"):
            return True
        if not token.startswith("&"):
            return False
    return False


def _implicit_tag(text: str) -> str:
    """The tag the YAML loader gives a plain scalar with this text (int, bool, null, ...)."""
    resolvers = Resolver.yaml_implicit_resolvers
    for tag, regexp in [*resolvers.get(text[:1], []), *resolvers.get(None, [])]:
        if regexp.match(text):
            return str(tag)
    return _STR_TAG


class _Walker:
    """Turns a composed node tree into a Val tree, recording issues and the line of each path."""

    def __init__(
        self,
        text: str,
        environ: Mapping[str, str],
        issues: list[ConfigIssue],
        lines: dict[str, int],
    ) -> None:
        self._text = text
        self._environ = environ
        self._issues = issues
        self._lines = lines
        self._constructor = SafeConstructor()
        # Aliases make the tree a graph: convert each node once (so "billion laughs" stays
        # linear) and detect an alias used inside its own anchor.
        self._done: dict[int, Val] = {}
        self._active: set[int] = set()

    def walk(self, node: yaml.Node, path: str) -> Val:
        key = id(node)
        if key in self._active:
            self._issue(path, "recursive alias (an anchor used inside itself)", _line(node))
            return Val(INVALID, _line(node))
        done = self._done.get(key)
        if done is not None:
            return done
        self._active.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                val = self._mapping(node, path)
            elif isinstance(node, yaml.SequenceNode):
                val = self._sequence(node, path)
            elif isinstance(node, yaml.ScalarNode):
                val = self._scalar(node, path)
            else:  # pragma: no cover - the composer makes only these three
                raise TypeError(f"unexpected YAML node {node!r}")
        finally:
            self._active.discard(key)
        self._done[key] = val
        return val

    def _issue(self, path: str, message: str, line: int | None) -> None:
        self._issues.append(ConfigIssue(path, message, line))

    def _mapping(self, node: yaml.MappingNode, path: str) -> Val:
        if node.tag != _MAP_TAG:
            self._issue(path, f'unsupported YAML tag "{_tag_name(node.tag)}"', _line(node))
            return Val(INVALID, _line(node))
        entries: dict[object, Entry] = {}
        merged: dict[object, Entry] = {}
        for key_node, value_node in node.value:
            key_line = _line(key_node)
            if key_node.tag == _MERGE_TAG:
                self._merge(merged, value_node, join(path, "<<"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(path, "a key must be a scalar, not a list or mapping", key_line)
                continue
            key_path = join(path, key_node.value)
            key = self._construct(key_node.tag, key_node.value, key_path, key_line)
            if key is INVALID:
                continue
            first = entries.get(key)
            if first is not None:
                self._issue(
                    key_path, f"duplicate key (first defined on line {first.line})", key_line
                )
                continue
            self._lines[key_path] = key_line
            entries[key] = Entry(key_node.value, key_line, self.walk(value_node, key_path))
        for key, entry in merged.items():
            if key not in entries:
                entries[key] = entry
                self._lines.setdefault(join(path, entry.key), entry.line)
        return Val(entries, _line(node))

    def _merge(self, merged: dict[object, Entry], node: yaml.Node, path: str) -> None:
        """Apply a ``<<`` merge key: earlier sources win, explicit keys win over all."""
        source = self.walk(node, path)
        sources = source.value if isinstance(source.value, list) else [source]
        for item in sources:
            if isinstance(item.value, dict):
                for key, entry in item.value.items():
                    merged.setdefault(key, entry)
            elif item.value is not INVALID:
                self._issue(path, "a merge (<<) needs a mapping or a list of mappings", item.line)

    def _sequence(self, node: yaml.SequenceNode, path: str) -> Val:
        if node.tag != _SEQ_TAG:
            self._issue(path, f'unsupported YAML tag "{_tag_name(node.tag)}"', _line(node))
            return Val(INVALID, _line(node))
        items = []
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            self._lines[item_path] = _line(item)
            items.append(self.walk(item, item_path))
        return Val(items, _line(node))

    def _scalar(self, node: yaml.ScalarNode, path: str) -> Val:
        line = _line(node)
        tag, text = node.tag, str(node.value)
        # Expansion runs after composing so that line numbers refer to the file as written.
        if tag == _STR_TAG and "$" in text:
            text, errors = _expand_env(text, self._environ)
            for message in errors:
                self._issue(path, message, line)
            if errors:
                return Val(INVALID, line)
            if node.style is None and not _has_explicit_tag(self._text, node):
                tag = _implicit_tag(text)
        return Val(self._construct(tag, text, path, line), line)

    def _construct(self, tag: str, text: str, path: str, line: int) -> object:
        """The Python value of a scalar, or INVALID (reported) if its tag cannot take it."""
        if tag in (_STR_TAG, _MERGE_TAG, _VALUE_TAG):
            return text
        if tag not in SafeConstructor.yaml_constructors:
            self._issue(path, f'unsupported YAML tag "{_tag_name(tag)}"', line)
            return INVALID
        try:
            value: object = self._constructor.construct_object(yaml.ScalarNode(tag, text), True)
        except Exception:  # the constructors raise assorted errors on malformed tagged values
            self._issue(path, f'"{text}" is not a valid {_tag_name(tag)}', line)
            return INVALID
        return value


def _yaml_issue(exc: yaml.YAMLError, text: str) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and problem.startswith("but "):  # "expected X" + "but found Y"
            problem = f"{exc.context} {problem}"
        if mark is None:
            return ConfigIssue("", f"invalid YAML: {problem}")
        return ConfigIssue(
            "", f"invalid YAML at column {mark.column + 1}: {problem}", mark.line + 1
        )
    if isinstance(exc, ReaderError):
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        column = position - text.rfind("\n", 0, position)
        char = exc.character
        code = ord(char) if isinstance(char, str) else int(char)
        message = f"invalid YAML at column {column}: character #x{code:04x}: {exc.reason}"
        return ConfigIssue("", message, line)
    return ConfigIssue("", f"invalid YAML: {exc}")


def read_tree(
    text: str, environ: Mapping[str, str], issues: list[ConfigIssue], lines: dict[str, int]
) -> Val | None:
    """The document's top-level mapping as a Val tree; None (reported) if it has none."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        issues.append(_yaml_issue(exc, text))
        return None
    if node is None or (node.tag == _NULL_TAG and node.value == ""):  # blank, or just "---"
        issues.append(ConfigIssue("", 'the config is empty (at least "backends" is required)'))
        return None
    root = _Walker(text, environ, issues, lines).walk(node, "")
    if not isinstance(root.value, dict):
        if root.value is not INVALID:
            message = f"the top level must be a mapping of settings, not a {kind(root.value)}"
            issues.append(ConfigIssue("", message, root.line))
        return None
    return root
