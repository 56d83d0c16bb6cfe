"""Top-level settings (proxy/config/): listen, workers, strategy and strategy_options,
preserve_host, the listener's TLS and config reloading."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import (
    LimitsConfig,
    ListenTlsConfig,
    RateLimitConfig,
    RetriesConfig,
    ToolRateConfig,
)
from mcplb.proxy.config.validate import file_issues, validated, worker_count
from tests.support.config_docs import (
    BACKEND,
    EXAMPLE,
    NO_SESSIONS,
    RATE_HINT,
    RATE_KEY_HINT,
    RETRY_CONDITION_HINT,
    doc,
    error,
    errors,
    parse,
    pem_file,
    section_doc,
    with_top,
)

# --- listen -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("localhost:65535", "localhost", 65535),
        ("my_host.example.com:80", "my_host.example.com", 80),
        ('"[::1]:8080"', "::1", 8080),
        ("'[2001:db8::5]:443'", "2001:db8::5", 443),
    ],
)
def test_listen_valid(value: str, host: str, port: int) -> None:
    config = parse(with_top(f"listen: {value}"))
    assert (config.listen_host, config.listen_port) == (host, port)


HOST_PORT = 'must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8080", HOST_PORT),
        ("true", HOST_PORT),
        ("127.0.0.1", HOST_PORT),
        ('"[::1]"', HOST_PORT),
        ('["::1", 8080]', HOST_PORT + " (quote IPv6 addresses)"),
        ('":8080"', 'host is missing (use "0.0.0.0:PORT" for all interfaces)'),
        ('"::1:8080"', 'IPv6 addresses must be in brackets, e.g. "[::1]:8080"'),
        ('"[zz]:80"', 'invalid IPv6 address "zz"'),
        ('"bad host:80"', 'invalid host "bad host"'),
        ('"999.1.1.1:80"', 'invalid host "999.1.1.1"'),
        ('"-x:80"', 'invalid host "-x"'),
        ("127.0.0.1:65536", "port must be a number between 0 and 65535"),
        ("127.0.0.1:-1", "port must be a number between 0 and 65535"),
        ("127.0.0.1:http", "port must be a number between 0 and 65535"),
        ("'127.0.0.1:'", "port must be a number between 0 and 65535"),
        pytest.param(
            "'127.0.0.1:" + "9" * 5000 + "'",
            "port must be a number between 0 and 65535",
            id="5000-digit-port",
        ),
    ],
)
def test_listen_invalid(value: str, message: str) -> None:
    assert error(with_top(f"listen: {value}")) == f"listen: {message} (line 1)"


# --- workers, strategy, preserve_host -----------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("256", 256), ("0x10", 16)])
def test_workers_valid(value: str, expected: int) -> None:
    assert parse(with_top(f"workers: {value}") + NO_SESSIONS).workers == expected


def test_workers_auto() -> None:
    expected = min(os.cpu_count() or 1, 256)
    config = parse(with_top("workers: auto") + NO_SESSIONS)
    assert config.workers == "auto"  # loading is pure: validated() counts the CPUs
    assert worker_count(config.workers) == expected


def test_workers_auto_is_counted_by_validated(tmp_path: Path) -> None:
    path = tmp_path / "mcplb.yaml"
    path.write_text(doc(with_top("workers: auto") + "sticky: {store: redis}\n"))
    assert validated(str(path)).workers == min(os.cpu_count() or 1, 256)


def test_parse_config_is_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading looks only at the text: the CPU count and the files it names are for
    validate.py, which `check`, `run` and reloads call."""
    text = """
        workers: auto
        backends:
          - name: a
            url: https://mcp.example.com
            ca: /nonexistent/mcplb/ca.pem
        sticky: {store: redis}
        listen_tls:
          cert: /nonexistent/mcplb/cert.pem
          key: /nonexistent/mcplb/key.pem
        """

    def machine(*args: object) -> None:
        raise AssertionError("parse_config looked at the machine")

    with monkeypatch.context() as patched:
        patched.setattr(os, "cpu_count", machine)
        patched.setattr(os.path, "isfile", machine)
        config = parse_config(doc(text), environ={})
    assert config.workers == "auto"
    assert config.listen_tls == ListenTlsConfig(
        "/nonexistent/mcplb/cert.pem", "/nonexistent/mcplb/key.pem"
    )
    assert config.backends[0].ca == "/nonexistent/mcplb/ca.pem"
    # The separate step finds what the machine lacks, at the same paths and lines.
    assert [str(issue) for issue in file_issues(config)] == [
        "listen_tls.cert: no such file: /nonexistent/mcplb/cert.pem (line 8)",
        "listen_tls.key: no such file: /nonexistent/mcplb/key.pem (line 9)",
        "backends[0].ca: no such file: /nonexistent/mcplb/ca.pem (line 5)",
    ]


@pytest.mark.parametrize("value", ["0", "-1", '"4"', "1.5", "true", "~", "[1]", "many"])
def test_workers_invalid(value: str) -> None:
    assert (
        error(with_top(f"workers: {value}"))
        == 'workers: must be an integer >= 1 or "auto" (line 1)'
    )


def test_workers_cap() -> None:
    assert error(with_top("workers: 257")) == "workers: must be at most 256 (line 1)"


@pytest.mark.parametrize(
    "value", ["round_robin", "least_conn2", "p2c", "mod:Cls", "my.pkg.mod:MyStrategy", "_a._b:_C1"]
)
def test_strategy_valid(value: str) -> None:
    assert parse(with_top(f"strategy: {value}")).strategy == value


@pytest.mark.parametrize(
    "value",
    [
        '""',
        "pkg.mod",
        "pkg:mod:Cls",
        "pkg.:Cls",
        "1pkg:Cls",
        "'mod:'",
        "5",
        "[a]",
    ],
)
def test_strategy_invalid(value: str) -> None:
    assert error(with_top(f"strategy: {value}")) == (
        "strategy: must be a built-in strategy name ([a-z0-9_]+)"
        ' or "package.module:ClassName" (line 1)'
    )


BUILT_IN = "built-in: ip_hash, least_connections, least_sessions, power_of_two, random, round_robin"


@pytest.mark.parametrize("value", ["RoundRobin", "round-robin", "Round_Robin"])
def test_strategy_near_miss_names(value: str) -> None:
    assert error(with_top(f"strategy: {value}")) == (
        f"strategy: unknown strategy '{value}' (did you mean 'round_robin'? {BUILT_IN}) (line 1)"
    )


def test_strategy_name_without_a_near_miss_lists_the_names() -> None:
    assert error(with_top("strategy: Fastest-One")) == (
        f"strategy: unknown strategy 'Fastest-One' ({BUILT_IN}) (line 1)"
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("false", False), ("yes", True), ("Off", False)]
)
def test_preserve_host_valid(value: str, expected: bool) -> None:
    assert parse(with_top(f"preserve_host: {value}")).preserve_host is expected


@pytest.mark.parametrize("value", ['"true"', "'false'", "1", "0", "~", "enabled"])
def test_preserve_host_must_be_a_real_boolean(value: str) -> None:
    assert error(with_top(f"preserve_host: {value}")) == (
        "preserve_host: must be a boolean (true or false, unquoted) (line 1)"
    )


# --- strategy_options ---------------------------------------------------------


def test_strategy_options_any_data() -> None:
    options = (
        'strategy_options:\n  weights: &w {a: 1, b: 2.5}\n  again: *w\n  flags: [true, ~, "x"]\n'
    )
    config = parse(BACKEND + options)
    assert config.strategy_options == {
        "weights": {"a": 1, "b": 2.5},
        "again": {"a": 1, "b": 2.5},
        "flags": [True, None, "x"],
    }
    # An alias yields the same object, as with yaml.safe_load.
    assert config.strategy_options["weights"] is config.strategy_options["again"]


def test_strategy_options_nested_keys_may_be_any_scalar() -> None:
    config = parse(BACKEND + "strategy_options:\n  table: {1: a, 2.5: b, ~: c}\n")
    assert config.strategy_options == {"table": {1: "a", 2.5: "b", None: "c"}}


def test_strategy_options_top_keys_must_be_strings() -> None:
    assert error(BACKEND + "strategy_options:\n  7: seven\n") == (
        "strategy_options.7: keys must be strings (line 5)"
    )


@pytest.mark.parametrize("value", ["[1, 2]", "fast", "3"])
def test_strategy_options_must_be_a_mapping(value: str) -> None:
    assert (
        error(with_top(f"strategy_options: {value}"))
        == "strategy_options: must be a mapping (line 1)"
    )


def test_strategy_options_billion_laughs_stays_linear() -> None:
    levels = ["  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 25):
        refs = ", ".join([f"*l{n - 1}"] * 10)
        levels.append(f"  l{n}: &l{n} [{refs}]")
    config = parse(BACKEND + "strategy_options:\n" + "\n".join(levels) + "\n")
    assert config.strategy_options["l24"][0] is config.strategy_options["l23"]


# --- listener TLS and reloading -----------------------------------------------


def test_listen_tls_off_unless_configured() -> None:
    assert parse(BACKEND).listen_tls is None
    assert parse(with_top("listen_tls:")).listen_tls is None
    assert parse(with_top("listen_tls: ~")).listen_tls is None


def test_listen_tls(tmp_path: Path) -> None:
    cert, key = pem_file(tmp_path, "cert.pem"), pem_file(tmp_path, "key.pem")
    config = parse(section_doc("listen_tls", f"cert: '{cert}'\nkey: '{key}'"))
    assert config.listen_tls == ListenTlsConfig(str(cert), str(key))
    flow = parse(with_top(f"listen_tls: {{cert: '{cert}', key: '{key}'}}"))
    assert flow.listen_tls == config.listen_tls
    env = parse(
        section_doc("listen_tls", "cert: ${CERT}\nkey: ${KEY}"), CERT=str(cert), KEY=str(key)
    )
    assert env.listen_tls == config.listen_tls


def test_listen_tls_needs_cert_and_key(tmp_path: Path) -> None:
    cert = pem_file(tmp_path, "cert.pem")
    assert error(with_top(f"listen_tls: {{cert: '{cert}'}}")) == (
        'listen_tls: missing required key "key" (line 1)'
    )
    assert error(with_top(f"listen_tls: {{key: '{cert}'}}")) == (
        'listen_tls: missing required key "cert" (line 1)'
    )
    assert errors(with_top("listen_tls: {}")) == [
        'listen_tls: missing required key "cert" (line 1)',
        'listen_tls: missing required key "key" (line 1)',
    ]


def test_listen_tls_files_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    body = f"cert: '{missing}'\nkey: '{tmp_path}'"
    assert errors(section_doc("listen_tls", body)) == [
        f"listen_tls.cert: no such file: {missing} (line 5)",
        f"listen_tls.key: no such file: {tmp_path} (line 6)",  # a directory
    ]
    assert errors(section_doc("listen_tls", "cert: 5\nkey: ''")) == [
        "listen_tls.cert: must be a file path (line 5)",
        "listen_tls.key: must be a file path (line 6)",
    ]


def test_listen_tls_unknown_key(tmp_path: Path) -> None:
    cert = pem_file(tmp_path)
    body = f"cert: '{cert}'\nkey: '{cert}'\ncrt: '{cert}'"
    assert error(section_doc("listen_tls", body)) == (
        'listen_tls.crt: unknown key (did you mean "cert"?) (line 7)'
    )
    body = f"cert: '{cert}'\nkey: '{cert}'\nca: '{cert}'"
    assert error(section_doc("listen_tls", body)) == (
        "listen_tls.ca: unknown key (expected one of: cert, key, client_ca) (line 7)"
    )


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False)])
def test_watch_config_valid(value: str, expected: bool) -> None:
    assert parse(with_top(f"watch_config: {value}")).watch_config is expected
    assert parse(BACKEND).watch_config is False


@pytest.mark.parametrize("value", ['"true"', "1", "~", "always"])
def test_watch_config_must_be_a_boolean(value: str) -> None:
    assert error(with_top(f"watch_config: {value}")) == (
        "watch_config: must be a boolean (true or false, unquoted) (line 1)"
    )


def test_new_sections_issues_reported_together_in_line_order() -> None:
    text = """
        backends:
          - name: a
            url: http://127.0.0.1:9001
            max_connections: 0
            verify: false
        limits:
          max_queue: -1
        retries:
          attempts: 11
          "on": [reset, 500]
        rate_limit:
          rate: 5/d
          key: ip
        listen_tls:
          cert: /nonexistent/mcplb/cert.pem
        watch_config: "yes"
        """
    assert errors(text) == [
        "backends[0].max_connections: must be an integer >= 1 (line 4)",
        "backends[0].verify: only used with https:// backend urls (line 5)",
        "limits.max_queue: must be an integer >= 0 (line 7)",
        "retries.attempts: must be an integer from 0 to 10 (line 9)",
        f"retries.on[1]: {RETRY_CONDITION_HINT} (line 10)",
        f"rate_limit.rate: {RATE_HINT} (line 12)",
        f"rate_limit.key: {RATE_KEY_HINT} (line 13)",
        'listen_tls: missing required key "key" (line 15)',  # the mapping's first line
        "listen_tls.cert: no such file: /nonexistent/mcplb/cert.pem (line 15)",
        "watch_config: must be a boolean (true or false, unquoted) (line 16)",
    ]


def test_example_commented_blocks_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    # limits: the commented-out concurrency caps.
    text = re.sub(r"^  # (max_in_flight|max_streams): (\d+)$", r"  \1: \2", text, flags=re.M)
    # listen_tls and rate_limit: whole commented-out sections.
    for first, last in (("# listen_tls:\n", "\n\n"), ("# rate_limit:\n", "\n\n# Backend health")):
        start = text.index(first)
        end = text.index(last, start)
        text = text[:start] + re.sub(r"^# ", "", text[start:end], flags=re.M) + text[end:]
    cert, key = pem_file(tmp_path, "tls.crt"), pem_file(tmp_path, "tls.key")
    text = text.replace("/etc/mcplb/tls.crt", str(cert)).replace("/etc/mcplb/tls.key", str(key))
    config = parse_config(text, environ={})
    assert config.limits == LimitsConfig(max_in_flight=1000, max_streams=1000)
    assert config.listen_tls == ListenTlsConfig(str(cert), str(key))
    assert config.rate_limit == RateLimitConfig(
        rate=10.0,
        trusted_proxies=("10.0.0.0/8",),
        tools=(ToolRateConfig("search_*", 10 / 60, 5),),
    )
    assert config.retries == RetriesConfig()


def test_rate_limit_trusted_proxies() -> None:
    doc = section_doc("rate_limit", 'rate: 5\ntrusted_proxies: ["10.0.0.0/8", " ::1 "]')
    config = parse(doc).rate_limit
    assert config is not None and config.trusted_proxies == ("10.0.0.0/8", "::1")
    assert parse(section_doc("rate_limit", "rate: 5")).rate_limit.trusted_proxies == ()  # type: ignore[union-attr]
    bad = errors(
        section_doc("rate_limit", 'rate: 5\ntrusted_proxies: ["10.0.0.0/8", "10.0.0.300/8"]')
    )
    assert bad == [
        'rate_limit.trusted_proxies[1]: "10.0.0.300/8" is not a network in CIDR notation (line 6)'
    ]
