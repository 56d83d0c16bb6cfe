"""The ``auth:`` config section: what ``mcplb check`` refuses, with field path and line,
and the defaults it fills in (the audience is the resource)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import parse_config

HEAD = 'backends: [{name: a, url: "http://127.0.0.1:9001"}]\n'


def issues(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(ConfigError) as error:
        parse_config(HEAD + text)
    return [(i.path, i.message, i.line) for i in error.value.issues]


def auth(resource: str = "https://mcp.example.com/mcp", jwt: str = "") -> str:
    return f"""auth:
  resource: {resource}
  jwt:
    issuer: https://idp.example.com
    jwks_url: https://idp.example.com/jwks
{jwt}"""


def test_defaults_audience_is_the_resource() -> None:
    config = parse_config(HEAD + auth())
    assert config.auth is not None
    assert config.auth.jwt.audience == ("https://mcp.example.com/mcp",)
    assert config.auth.jwt.algorithms == ("RS256", "ES256")
    assert config.auth.forward_token is True
    assert parse_config(HEAD).auth is None
    assert parse_config(HEAD + "auth:\n").auth is None  # all keys commented out: off


@pytest.mark.parametrize(
    ("algorithm", "message"),
    [
        ("none", '"none" would accept unsigned tokens: never allowed'),
        ("HS256", '"HS256" is a shared-secret algorithm'),
        ("RS1", "must be one of RS256"),
    ],
)
def test_algorithms_never_none_nor_hmac(algorithm: str, message: str) -> None:
    [(path, text, line)] = issues(auth(jwt=f"    algorithms: [RS256, {algorithm}]\n"))
    assert path == "auth.jwt.algorithms[1]" and line == 7
    assert text.startswith(message)


def test_resource_must_be_https_unless_loopback() -> None:
    [(path, text, line)] = issues(auth(resource="http://mcp.example.com/mcp"))
    assert (path, line) == ("auth.resource", 3)
    assert "https" in text
    assert parse_config(HEAD + auth(resource="http://127.0.0.1:8080/mcp")).auth is not None
    [(path, text, _)] = issues(auth(resource="https://mcp.example.com/mcp?x=1"))
    assert path == "auth.resource" and "query" in text
    [(path, text, _)] = issues(auth(resource="mcp.example.com/mcp"))
    assert path == "auth.resource" and "absolute" in text


def test_jwks_url_https_and_jwt_required() -> None:
    text = (
        "auth:\n  resource: https://m.example.com\n  jwt:\n"
        "    issuer: https://i.example.com\n    jwks_url: http://i.example.com/jwks\n"
    )
    [(path, message, line)] = issues(text)
    assert (path, line) == ("auth.jwt.jwks_url", 6) and "https" in message
    [(path, message, line)] = issues("auth:\n  resource: https://m.example.com\n")
    assert path == "auth" and message == 'missing required key "jwt"' and line == 3


def test_rate_limit_key_principal() -> None:
    config = parse_config(HEAD + "rate_limit: {rate: 5, key: principal}\n")
    assert config.rate_limit is not None and config.rate_limit.header == ":principal"
    [(path, message, _)] = issues("rate_limit: {rate: 5, key: user}\n")
    assert path == "rate_limit.key" and "principal" in message


def test_identity_headers_checked() -> None:
    text = auth() + "  identity_headers: {subject: authorization, scopes: x-s}\n"
    [(path, message, line)] = issues(text)
    assert path == "auth.identity_headers.subject" and line == 7
    assert "authorization" in message
    text = auth() + "  identity_headers: {subject: x-s, scopes: x-s}\n"
    [(path, message, _)] = issues(text)
    assert path == "auth.identity_headers.scopes" and message == "must differ from subject"


@pytest.mark.parametrize(
    ("document", "heading"),
    [("README.md", "## Authentication at the edge"), ("docs/deploy.md", "**Authentication at")],
)
def test_the_documented_auth_examples_pass_check(document: str, heading: str) -> None:
    text = (Path(__file__).resolve().parent.parent / document).read_text()
    block = text.split(heading, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(HEAD + block)
    assert config.auth is not None and config.auth.resource == "https://mcp.example.com/mcp"
