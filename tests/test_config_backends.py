"""backends (proxy/config/): names, URLs, weights, per-backend limits and TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.config_docs import BACKEND, error, errors, parse, pem_file, with_backend

# --- backends -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["[]", "{}", "~", "http://h", "{name: a, url: 'http://h'}"])
def test_backends_must_be_a_non_empty_list(value: str) -> None:
    assert (
        error(f"backends: {value}\n") == "backends: must be a non-empty list of backends (line 1)"
    )


def test_backends_required() -> None:
    assert error("workers: 1\n") == 'missing required key "backends" (line 1)'


@pytest.mark.parametrize("value", ["http://h", "~", "[a]"])
def test_backend_entry_must_be_a_mapping(value: str) -> None:
    assert error(f"backends:\n  - {value}\n") == "backends[0]: must be a mapping (line 2)"


def test_backend_required_keys() -> None:
    assert errors("backends:\n  - weight: 1\n  - name: b\n  - url: http://h\n") == [
        'backends[0]: missing required key "name" (line 2)',
        'backends[0]: missing required key "url" (line 2)',
        'backends[1]: missing required key "url" (line 3)',
        'backends[2]: missing required key "name" (line 4)',
    ]


@pytest.mark.parametrize("name", ["a", "A", "0", "mcp-a", "x.y_z-1", "a" * 64])
def test_backend_name_valid(name: str) -> None:
    assert parse(f"backends:\n  - name: '{name}'\n    url: http://h\n").backends[0].name == name


@pytest.mark.parametrize(
    "name", ["''", "-a", ".a", "_a", "a b", "'a/b'", "é", "a" * 65, "5", "true", "~"]
)
def test_backend_name_invalid(name: str) -> None:
    assert error(f"backends:\n  - name: {name}\n    url: http://h\n") == (
        "backends[0].name: must be a string of 1 to 64 letters, digits, _ . or -, "
        "starting with a letter or digit (line 2)"
    )


def test_duplicate_backend_name() -> None:
    text = """
        backends:
          - name: a
            url: http://h:1
          - name: b
            url: http://h:2
          - name: a
            url: http://h:3
          - name: b
            url: http://h:4
        """
    assert errors(text) == [
        'backends[2].name: duplicate backend name "a" (already used by backends[0]) (line 6)',
        'backends[3].name: duplicate backend name "b" (already used by backends[1]) (line 8)',
    ]


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("1", 1), ("1000", 1000)])
def test_weight_valid(value: str, expected: int) -> None:
    assert parse(with_backend(f"    weight: {value}\n")).backends[0].weight == expected


@pytest.mark.parametrize("value", ["-1", "1001", '"2"', "1.5", "true", "~", "heavy"])
def test_weight_invalid(value: str) -> None:
    assert error(with_backend(f"    weight: {value}\n")) == (
        "backends[0].weight: must be an integer between 0 and 1000 (line 4)"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9001", ("http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")),
        ("http://127.0.0.1:9001/", ("http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")),
        ("http://example.com", ("http://example.com", "http", "example.com", 80, "")),
        ("https://example.com", ("https://example.com", "https", "example.com", 443, "")),
        (
            "https://example.com:8443/a/b//",
            ("https://example.com:8443/a/b", "https", "example.com", 8443, "/a/b"),
        ),
        ("'http://[::1]:9000/mcp/'", ("http://[::1]:9000/mcp", "http", "::1", 9000, "/mcp")),
        ("http://mcp_a:1", ("http://mcp_a:1", "http", "mcp_a", 1, "")),
        ("'http://h:'", ("http://h", "http", "h", 80, "")),
    ],
)
def test_url_valid(url: str, expected: tuple[str, str, str, int, str]) -> None:
    backend = parse(f"backends:\n  - name: a\n    url: {url}\n").backends[0]
    assert (
        backend.url,
        backend.scheme,
        backend.host,
        backend.port,
        backend.path_prefix,
    ) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h", "scheme must be http or https"),
        ("ws://h", "scheme must be http or https"),
        ("127.0.0.1:9001", 'needs a scheme: write "http://127.0.0.1:9001" (or https://)'),
        ("localhost:9001", 'needs a scheme: write "http://localhost:9001" (or https://)'),
        ("mcp-a:9001/api", 'needs a scheme: write "http://mcp-a:9001/api" (or https://)'),
        ("/mcp", "scheme must be http or https"),
        ("http://", "host is missing"),
        ("http:///mcp", "host is missing"),
        ("http://:80", "host is missing"),
        ("http://user@h", "must not contain user info (user:password@)"),
        ("http://u:p@h:1/", "must not contain user info (user:password@)"),
        ("http://h/?a=1", "must not have a query string"),
        ("http://h?", "must not have a query string"),
        ("'http://h/#top'", "must not have a fragment"),
        ("http://h:0", "port must be a number between 1 and 65535"),
        ("http://h:65536", "port must be a number between 1 and 65535"),
        ("http://h:x", "port must be a number between 1 and 65535"),
        ("http://h:-1", "port must be a number between 1 and 65535"),
        ("'http://[::1]:0'", "port must be a number between 1 and 65535"),
        ("http://bad!host", 'invalid host "bad!host"'),
        ("http://999.0.0.1", 'invalid host "999.0.0.1"'),
        ("'http://a b'", "must not contain whitespace or control characters"),
        ('"http://h/\\tx"', "must not contain whitespace or control characters"),
        ("''", 'must be a URL string such as "http://127.0.0.1:9001"'),
        ("80", 'must be a URL string such as "http://127.0.0.1:9001"'),
        ("{host: h}", 'must be a URL string such as "http://127.0.0.1:9001"'),
    ],
)
def test_url_invalid(url: str, message: str) -> None:
    assert (
        error(f"backends:\n  - name: a\n    url: {url}\n") == f"backends[0].url: {message} (line 3)"
    )


def test_url_unparseable_ipv6() -> None:
    found = error("backends:\n  - name: a\n    url: 'http://[::1'\n")
    assert found.startswith("backends[0].url: cannot be parsed (")
    assert found.endswith(") (line 3)")


# --- backend limits and TLS ---------------------------------------------------


def https_backend(extra: str) -> str:
    """One https backend whose entry gets ``extra`` lines appended (from line 4)."""
    return "backends:\n  - name: a\n    url: https://mcp.example.com\n" + extra


def test_backend_limits_and_tls_defaults() -> None:
    backend = parse(BACKEND).backends[0]
    assert (backend.max_connections, backend.max_streams) == (None, None)
    assert (backend.ca, backend.verify) == (None, True)


@pytest.mark.parametrize("key", ["max_connections", "max_streams"])
@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("64", 64), ("100000", 100000)])
def test_backend_connection_limits_valid(key: str, value: str, expected: int) -> None:
    backend = parse(with_backend(f"    {key}: {value}\n")).backends[0]
    assert getattr(backend, key) == expected


@pytest.mark.parametrize("key", ["max_connections", "max_streams"])
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "'5'", "true", "~", "many"])
def test_backend_connection_limits_invalid(key: str, value: str) -> None:
    assert error(with_backend(f"    {key}: {value}\n")) == (
        f"backends[0].{key}: must be an integer >= 1 (line 4)"
    )


def test_backend_ca_and_verify_with_https(tmp_path: Path) -> None:
    ca = pem_file(tmp_path)
    backend = parse(https_backend(f"    ca: '{ca}'\n")).backends[0]
    assert (backend.ca, backend.verify) == (str(ca), True)
    backend = parse(https_backend("    verify: false\n")).backends[0]
    assert (backend.ca, backend.verify) == (None, False)
    backend = parse(https_backend(f"    ca: '{ca}'\n    verify: true\n")).backends[0]
    assert (backend.ca, backend.verify) == (str(ca), True)


def test_backend_ca_and_verify_only_with_https(tmp_path: Path) -> None:
    ca = pem_file(tmp_path)
    assert error(with_backend(f"    ca: '{ca}'\n")) == (
        "backends[0].ca: only used with https:// backend urls (line 4)"
    )
    assert error(with_backend("    verify: false\n")) == (
        "backends[0].verify: only used with https:// backend urls (line 4)"
    )
    assert errors(with_backend(f"    ca: '{ca}'\n    verify: false\n")) == [
        "backends[0].ca: only used with https:// backend urls (line 4)",
        "backends[0].verify: only used with https:// backend urls (line 5)",
    ]
    # verify: true is the default written out: not refused.
    assert parse(with_backend("    verify: true\n")).backends[0].verify is True
    # A bad url or a bad value is reported alone, without a knock-on https error.
    bad_url = "backends:\n  - name: a\n    url: ftp://h\n    verify: false\n"
    assert error(bad_url) == "backends[0].url: scheme must be http or https (line 3)"
    assert error(with_backend("    ca: 5\n")) == "backends[0].ca: must be a file path (line 4)"


def test_backend_ca_invalid(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    cases = {
        "5": "must be a file path",
        "''": "must be a file path",
        "~": "must be a file path",
        "[a.pem]": "must be a file path",
        f"'{missing}'": f"no such file: {missing}",
        f"'{tmp_path}'": f"no such file: {tmp_path}",  # a directory
    }
    for value, message in cases.items():
        assert error(https_backend(f"    ca: {value}\n")) == f"backends[0].ca: {message} (line 4)"


@pytest.mark.parametrize("value", ['"false"', "0", "~", "never"])
def test_backend_verify_must_be_a_boolean(value: str) -> None:
    assert error(https_backend(f"    verify: {value}\n")) == (
        "backends[0].verify: must be a boolean (true or false, unquoted) (line 4)"
    )


def test_backend_ca_from_environment(tmp_path: Path) -> None:
    ca = pem_file(tmp_path)
    backend = parse(https_backend("    ca: ${CA}\n"), CA=str(ca)).backends[0]
    assert backend.ca == str(ca)
