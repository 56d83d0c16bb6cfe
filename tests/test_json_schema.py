"""mcplb.schema.json: generated from the schema in code, current, valid JSON Schema, and read
by an independent validator (the ``jsonschema`` package) the way an editor reads a config:
it accepts every config we ship (config.example.yaml, deploy/, the docs' examples), and it
refuses what ``mcplb check`` refuses wherever one key can say so (unknown keys, types,
enums, ranges, required keys), for every key of the schema, new ones included."""

from __future__ import annotations

import copy
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.fields import keys_of
from mcplb.proxy.config.json_schema import config_schema, schema_text
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "mcplb.schema.json"
EXAMPLE = ROOT / "config.example.yaml"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(?P<path>\S+)$", re.MULTILINE)
MINIMAL: dict[str, Any] = {"backends": [{"name": "a", "url": "http://127.0.0.1:9001"}]}


class Yaml12Loader(yaml.SafeLoader):
    """YAML as an editor's language server reads it (YAML 1.2: ``on``, ``yes`` are strings);
    mcplb's loader reads YAML 1.1 but takes such keys back as their text."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def validator(schema: dict[str, Any] | None = None) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        json.loads(SCHEMA_FILE.read_text()) if schema is None else schema
    )


def errors(document: Any, schema: dict[str, Any] | None = None) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator(schema).iter_errors(document)
    ]


def load(text: str) -> Any:
    return yaml.load(text, Loader=Yaml12Loader)  # a SafeLoader


# --- the file ---------------------------------------------------------------------------


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "mcplb.schema.json is stale (the config schema in code changed): run `make schema` "
        "and commit mcplb.schema.json"
    )


def test_mcplb_schema_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mcplb.proxy.cli", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == schema_text()
    assert json.loads(out.stdout)["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_it_is_valid_json_schema_that_lists_every_section() -> None:
    schema = config_schema()
    jsonschema.Draft7Validator.check_schema(schema)

    def check(cls: type, node: dict[str, Any], path: str) -> None:
        node = next(n for n in node.get("anyOf", [node]) if n.get("type") in ("object", "array"))
        node = node.get("items", node)
        assert node["additionalProperties"] is False, path
        assert list(node["properties"]) == list(keys_of(cls)), path
        for name, (_, spec) in keys_of(cls).items():
            if spec.section is not None:
                check(spec.section, node["properties"][name], f"{path}.{name}")

    check(Config, schema, "")


# --- every config we ship validates -------------------------------------------------------


def deploy_configs() -> Iterator[tuple[str, str]]:
    """(where, YAML text) of every mcplb config under deploy/: config files, and the
    config.yaml of every ConfigMap."""
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        where = str(path.relative_to(ROOT))
        if path.name == "config.yaml":
            yield where, path.read_text()
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "ConfigMap":
                for name, text in document.get("data", {}).items():
                    if name.endswith((".yaml", ".yml")):
                        yield f"{where}: data.{name}", text


def doc_blocks() -> Iterator[tuple[str, str]]:
    """(where, YAML text) of every ```yaml block of README.md and docs/: all are configs or
    parts of one."""
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            line = text.count("\n", 0, match.start()) + 1
            yield f"{path.relative_to(ROOT)}:{line}", match[1]


def test_the_shipped_configs_are_found() -> None:
    assert len(list(deploy_configs())) >= 3  # docker, the edge and sidecar ConfigMaps
    assert len(list(doc_blocks())) >= 5


def test_config_example_validates() -> None:
    assert errors(load(EXAMPLE.read_text())) == []


@pytest.mark.parametrize(("where", "text"), list(deploy_configs()), ids=lambda v: v[:60])
def test_deploy_configs_validate(where: str, text: str) -> None:
    assert errors(load(text)) == [], where


@pytest.mark.parametrize(("where", "text"), list(doc_blocks()), ids=lambda v: v[:60])
def test_docs_configs_validate(where: str, text: str) -> None:
    """A block of the docs may show a part of a config: it is checked as the rest of one
    would be, with every key it gives, but without requiring the backends it leaves out."""
    document = load(text)
    assert isinstance(document, dict), f"{where}: not a config"
    part = copy.deepcopy(config_schema())
    for rule in ("if", "then", "required"):
        part.pop(rule, None)
    assert errors(document, part) == [], where


def test_config_example_and_deploy_configs_carry_the_modeline() -> None:
    """The yaml-language-server modeline names the schema, by a path that reaches it."""
    found = {str(EXAMPLE.relative_to(ROOT)): (EXAMPLE.parent, EXAMPLE.read_text())}
    for where, text in deploy_configs():
        found[where] = ((ROOT / where.split(":")[0]).parent, text)
    for where, (directory, text) in found.items():
        match = MODELINE.search(text)
        assert match is not None, f"{where}: no yaml-language-server modeline"
        assert (directory / match["path"]).resolve() == SCHEMA_FILE, where
    for path in DOCS:
        if path.name in ("README.md", "deploy.md"):
            assert "# yaml-language-server: $schema=" in path.read_text(), path


# --- what mcplb check refuses, the schema refuses -------------------------------------------


def refused_by_mcplb(document: Any) -> set[str]:
    """The paths of the issues ``mcplb check`` (the loader) finds; empty when it accepts."""
    try:
        parse_config(yaml.safe_dump(document), environ={})
    except ConfigError as exc:
        return {issue.path for issue in exc.issues}
    return set()


def key_paths(cls: type = Config, prefix: tuple[str | int, ...] = ()) -> Iterator[Any]:
    """(path as keys and list indexes, Key) of every key of the schema."""
    for name, (_, spec) in keys_of(cls).items():
        path = (*prefix, name)
        yield path, spec
        if spec.shape == "section" and spec.section is not None:
            yield from key_paths(spec.section, path)
        elif spec.shape == "sections" and spec.section is not None:
            yield from key_paths(spec.section, (*path, 0))


def with_value(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """The minimal config with ``value`` at ``path``."""
    document = copy.deepcopy(MINIMAL)
    node: Any = document
    for step, following in itertools.pairwise(path):
        if isinstance(node, dict) and step not in node:
            node[step] = [{}] if isinstance(following, int) else {}
        node = node[step]
    node[path[-1]] = value
    return document


def dotted(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)[1:]


@pytest.mark.parametrize(
    ("path", "spec"), list(key_paths()), ids=lambda v: dotted(v) if isinstance(v, tuple) else ""
)
def test_a_value_of_the_wrong_type_or_an_unknown_key_is_refused_by_both(
    path: tuple[str | int, ...], spec: Any
) -> None:
    """Every key, new ones too: a section given an unknown key, a list or a scalar given a
    mapping, a free mapping given a list. mcplb check names the path; so does the schema."""
    if spec.shape == "section":
        bad_path, value = (*path, "no_such_key"), 1
        document = with_value(bad_path, value)
    else:
        bad_path, value = path, ([1] if spec.shape == "mapping" else {"no_such_key": 1})
        document = with_value(path, value)
    assert dotted(bad_path) in refused_by_mcplb(document)
    found = errors(document)
    assert found, (
        f"the schema accepts {dotted(path)}: {value!r}; "
        "declare what its check accepts with checks.accepts"
    )


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"workers": "two"}, "workers"),
        ({"workers": 0}, "workers"),
        ({"strategy": "round-robin"}, "strategy"),
        ({"preserve_host": "yes"}, "preserve_host"),
        ({"listen": 8080}, "listen"),
        ({"sticky": {"store": "disk"}}, "sticky.store"),
        ({"sticky": {"keys": ["short"]}}, "sticky.keys[0]"),
        ({"sticky": {"cookie": {"same_site": "sometimes"}}}, "sticky.cookie.same_site"),
        ({"timeouts": {"connect": "2 seconds"}}, "timeouts.connect"),
        ({"timeouts": {"conect": "2s"}}, "timeouts.conect"),
        ({"limits": {"max_body_bytes": "10 megs"}}, "limits.max_body_bytes"),
        ({"limits": {"max_header_bytes": 10}}, "limits.max_header_bytes"),
        ({"retries": {"attempts": 11}}, "retries.attempts"),
        ({"retries": {"on": ["timeout"]}}, "retries.on[0]"),
        ({"log": {"format": "xml"}}, "log.format"),
        ({"log": {"level": "verbose"}}, "log.level"),
        ({"rate_limit": {"burst": 5}}, "rate_limit"),
        ({"rate_limit": {"rate": "fast"}}, "rate_limit.rate"),
        ({"rate_limit": {"rate": 1, "key": "cookie:x"}}, "rate_limit.key"),
        ({"listen_tls": {"cert": "/x.pem"}}, "listen_tls"),
        ({"health": {"initial": "maybe"}}, "health.initial"),
        ({"health": {"active": {"type": "grpc"}}}, "health.active.type"),
        ({"health": {"active": {"method": "POST"}}}, "health.active.method"),
        ({"health": {"active": {"expect_status": [700]}}}, "health.active.expect_status[0]"),
        ({"health": {"active": {"path": "healthz"}}}, "health.active.path"),
        (
            {"health": {"passive": {"max_ejection_percent": 101}}},
            "health.passive.max_ejection_percent",
        ),
        ({"admin": {"token": "short"}}, "admin.token"),
        ({"discovery": {"dns": {"port": 8000}}}, "discovery.dns"),
        (
            {"discovery": {"dns": {"name": "mcp", "port": 8000, "record": "MX"}}},
            "discovery.dns.record",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_values_are_refused_by_both(document: dict[str, Any], path: str) -> None:
    document = {**MINIMAL, **document}
    assert path in refused_by_mcplb(document)
    assert errors(document), f"the schema accepts {document}"


@pytest.mark.parametrize(
    "document",
    [
        {"backends": [{"name": "a"}]},  # no url
        {"backends": [{"url": "http://127.0.0.1:9001"}]},  # no name
        {"backends": []},
        {"backends": [{"name": "a", "url": "127.0.0.1:9001"}]},  # no scheme
        {"backends": [{"name": "a", "url": "ftp://127.0.0.1"}]},
        {"backends": [{"name": "a b", "url": "http://127.0.0.1:9001"}]},
        {"listen": "127.0.0.1:8080"},  # neither backends nor discovery
        {"backend": [{"name": "a", "url": "http://127.0.0.1:9001"}]},  # misspelt
    ],
)
def test_missing_required_keys_and_bad_backends_are_refused_by_both(
    document: dict[str, Any],
) -> None:
    assert refused_by_mcplb(document)
    assert errors(document), f"the schema accepts {document}"


@pytest.mark.parametrize(
    "document",
    [
        {"listen": "[::1]:8080", "workers": "auto", "strategy": "mypkg.mod:Mine"},
        {"timeouts": {"connect": "1h30m", "idle": 0.5, "shutdown_delay": 0}},
        {"limits": {"max_header_bytes": "64KiB", "max_body_bytes": 0, "min_body_rate": "1k"}},
        {"retries": {"on": [502, "503", "reset"]}},
        {"retries": {"on": "reset"}},
        {"sticky": {"cookie": {"same_site": "lax", "ttl": None}, "keys": ["k" * 32]}},
        {"sticky": {"cookie": None, "header": "X-Tenant"}},
        {"rate_limit": {"rate": "600/m", "key": "header:X-Api-Key"}},
        {"rate_limit": {"rate": 5, "trusted_proxies": ["10.0.0.1", " ::1 ", "fd00::/8"]}},
        {"allowed_hosts": "*", "backends": [{"name": "v6", "url": "HTTP://[::1]:9001/api/"}]},
        {
            "sticky": {
                "store": "redis",
                "redis": {"url": "unix:///run/redis.sock", "timeout": ".25s"},
            }
        },
        {"discovery": {"dns": {"name": "mcp.", "record": "SRV", "resolvers": ["[::1]:53"]}}},
        {"health": {"active": {"method": "head", "expect_status": "200-299"}}},
        {"health": None, "rate_limit": None, "listen_tls": None, "strategy_options": None},
        {"workers": "${WORKERS:-2}", "admin": {"token": "${MCPLB_ADMIN_TOKEN}"}},
        {"discovery": {"dns": {"name": "mcp-headless", "port": 8000}}, "backends": None},
    ],
)
def test_valid_configs_are_accepted_by_both(document: dict[str, Any]) -> None:
    """The schema must never mark what mcplb accepts (an editor would show a false error)."""
    document = {**MINIMAL, **document}
    if document.get("backends") is None:
        del document["backends"]
    environ = {"WORKERS": "2", "MCPLB_ADMIN_TOKEN": "t" * 16}
    text = yaml.safe_dump(document)
    try:
        parse_config(text, environ=environ)
    except ConfigError as exc:  # a config that needs keys for several workers: fine here
        assert all(issue.path == "sticky.keys" for issue in exc.issues), exc
    assert errors(load(text)) == []


def test_every_default_in_the_schema_is_valid_for_it() -> None:
    """The defaults an editor offers on completion are valid values (the generator offers
    only those the key's check takes; rules across keys may still refuse one, such as a
    Sentinel-only key written next to a url)."""
    checked = 0
    for path, _ in key_paths():
        node: Any = config_schema()
        for step in path:
            if isinstance(step, int):
                node = node["items"]
                continue
            node = next(n for n in node.get("anyOf", [node]) if "properties" in n or "items" in n)
            node = node["properties"][step]
        if "default" not in node:
            continue
        checked += 1
        assert jsonschema.Draft7Validator(
            {**node, "definitions": config_schema()["definitions"]}
        ).is_valid(node["default"]), dotted(path)
    assert checked > 50


# --- what a check accepts, the schema accepts (for every key, new ones too) ------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=70_000),
    st.floats(min_value=-5, max_value=1e6, allow_nan=False),
    st.text(alphabet="0123456789.:/-_ smhkKMGTiIbBaAdeHTPrsux[]*$", max_size=14),
    st.sampled_from(
        [
            "auto",
            "address",
            "header:X-Key",
            "reset",
            "502",
            "Lax",
            "none",
            "GET",
            "head",
            "/healthz",
            "http://127.0.0.1:9001",
            "https://h/p",
            "redis://r:6379/1",
            "unix:///s",
            "[::1]:53",
            "10.0.0.1",
            "a" * 40,
            "mcp-headless.default.svc",
            "200-399",
            "1h30m",
        ]
    ),
)


def scalar_keys() -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(path, check, the schema of one value) of every scalar key and list item."""
    schema = config_schema()

    def walk(cls: type, node: dict[str, Any], path: str) -> Iterator[Any]:
        node = next(n for n in node.get("anyOf", [node]) if n.get("type") in ("object", "array"))
        node = node.get("items", node)
        for name, (_, spec) in keys_of(cls).items():
            child = node["properties"][name]
            if spec.section is not None:
                yield from walk(spec.section, child, f"{path}.{name}".lstrip("."))
            elif spec.shape == "items":
                listed = next(n for n in child.get("anyOf", [child]) if n.get("type") == "array")
                yield f"{path}.{name}[]".lstrip("."), spec.item, listed["items"]
            elif spec.check is not None:
                yield f"{path}.{name}".lstrip("."), spec.check, child

    for path, check, node in walk(Config, schema, ""):
        yield path, check, {**node, "definitions": schema["definitions"]}


@pytest.mark.parametrize(
    ("path", "check", "node"), list(scalar_keys()), ids=lambda v: v if isinstance(v, str) else ""
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(value=SCALARS)
def test_every_value_a_check_accepts_the_schema_accepts(
    path: str, check: Any, node: dict[str, Any], value: Any
) -> None:
    """An editor must never mark a value mcplb takes: random values (numbers, booleans,
    null, strings of duration, size, rate, address and URL characters) that a key's check
    accepts are valid for its schema."""
    try:
        check(value)
    except ValueError:
        return
    assert jsonschema.Draft7Validator(node).is_valid(value), f"{path}: {value!r}"


def named_in_messages(check: Any) -> set[Any]:
    """The values a check's own messages name ('must be "address", "principal" or
    "header:NAME", e.g. "header:X-Api-Key"'): its choices and examples, as strings and, for
    numbers, as numbers too. A choice added to a check shows up here with no test change."""
    words: set[Any] = set()
    for bad in (None, {}, [], "\x00", -1, True, "zz", 10**9):
        try:
            check(bad)
        except ValueError as exc:
            for word in re.findall(r'"([^"]{1,60})"', str(exc)):
                words.add(word)
                if re.fullmatch(r"\d+", word):
                    words.add(int(word))
    return words


@pytest.mark.parametrize(
    ("path", "check", "node"), list(scalar_keys()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_the_values_a_check_names_in_its_messages_are_valid_for_the_schema(
    path: str, check: Any, node: dict[str, Any]
) -> None:
    validator = jsonschema.Draft7Validator(node)
    for value in named_in_messages(check):
        try:
            check(value)
        except ValueError:
            continue
        assert validator.is_valid(value), f"{path}: {value!r}"
