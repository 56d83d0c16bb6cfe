"""SECURITY.md names only keys that exist; Host values are parsed strictly (issue 29, N11)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcplb.proxy.config.fields import schema_keys
from mcplb.proxy.config.schema import Config
from mcplb.proxy.routing.host_check import HostPolicy, host_name

SECURITY = Path(__file__).resolve().parents[1] / "SECURITY.md"
_DOTTED = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)`")


def named_keys(text: str) -> list[str]:
    """Every backquoted dotted name in ``text`` whose first part is a top-level key."""
    top = set(schema_keys(Config)[""])
    return [m for m in _DOTTED.findall(text) if m.split(".")[0] in top]


def test_security_md_names_only_config_keys_that_exist() -> None:
    sections = schema_keys(Config)
    named = named_keys(SECURITY.read_text())
    assert len(named) >= 5  # the page does name its settings
    unknown = [
        name
        for name in named
        if name.rsplit(".", 1)[1] not in sections.get(name.rsplit(".", 1)[0], ())
    ]
    assert unknown == []


def test_the_check_finds_a_wrong_key() -> None:
    named = named_keys("with `admin.metrics_token_required` set, `limits.max_in_flight`")
    assert named == ["admin.metrics_token_required", "limits.max_in_flight"]
    assert "metrics_token_required" not in schema_keys(Config)["admin"]


@pytest.mark.parametrize(
    "host",
    [
        b"localhost:evil.example",
        b"[::1]evil.example",
        b"localhost:",
        b"localhost:8080:1",
        b"localhost:123456",
        b"[::1]:",
        b"[::1",
        b"localhost:+80",
        b"127.0.0.1:80 x",
    ],
)
def test_host_values_that_are_not_name_and_port_are_not_served(host: bytes) -> None:
    policy = HostPolicy(("localhost", "127.0.0.1", "[::1]"))
    assert not policy.allows(host)
    assert host_name(host) == b""


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"localhost", b"localhost"),
        (b"LocalHost:8080", b"localhost"),
        (b"[::1]", b"[::1]"),
        (b"[::1]:65535", b"[::1]"),
        (b"127.0.0.1:1", b"127.0.0.1"),
    ],
)
def test_name_and_port_are_served(host: bytes, name: bytes) -> None:
    assert host_name(host) == name
    assert HostPolicy(("localhost", "127.0.0.1", "[::1]")).allows(host)
