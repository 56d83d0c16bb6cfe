"""Tests for the YAML config loader and validator (proxy/config/)."""

from __future__ import annotations

import os
import pickle
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcplb.proxy.config.checks import parse_duration, parse_size
from mcplb.proxy.config.errors import ConfigError, ConfigIssue
from mcplb.proxy.config.loader import load_config, parse_config
from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    BackendConfig,
    Config,
    CookieConfig,
    HealthConfig,
    LimitsConfig,
    ListenTlsConfig,
    PassiveHealthConfig,
    RateLimitConfig,
    RedisConfig,
    RetriesConfig,
    StickyConfig,
    TimeoutsConfig,
)
from mcplb.proxy.config.validate import file_issues, validated, worker_count

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"
BACKEND = "backends:\n  - name: a\n    url: http://127.0.0.1:9001\n"
# Appended to documents with workers > 1 that are not about sessions: without it, the store
# defaults to "signed", which needs keys.
NO_SESSIONS = "sticky: {mcp_sessions: false}\n"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, **environ: str) -> Config:
    """The config of ``text``, the files it names checked as `check` and `run` do."""
    return parse_config(doc(text), environ=environ, checks=file_issues)


def errors(text: str, **environ: str) -> list[str]:
    """The issues parse_config and the file checks report for ``text``, as strings."""
    with pytest.raises(ConfigError) as info:
        parse_config(doc(text), environ=environ, checks=file_issues)
    return [str(issue) for issue in info.value.issues]


def error(text: str, **environ: str) -> str:
    """The single issue parse_config reports for ``text``."""
    found = errors(text, **environ)
    assert len(found) == 1, found
    return found[0]


def with_top(line: str) -> str:
    """A valid document plus one top-level line (which lands on line 1)."""
    return line + "\n" + BACKEND


def with_backend(extra: str) -> str:
    """A document with one backend whose entry gets ``extra`` lines appended (from line 4)."""
    return "backends:\n  - name: a\n    url: http://127.0.0.1:9001\n" + extra


# --- valid documents ----------------------------------------------------------


def test_minimal_config_uses_dataclass_defaults() -> None:
    config = parse(BACKEND)
    backend = BackendConfig("a", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "", 1)
    assert config == Config(
        backends=(backend,),
        lines={"backends": 1, "backends[0]": 2, "backends[0].name": 2, "backends[0].url": 3},
    )
    assert config.sticky == StickyConfig()
    assert config.timeouts == TimeoutsConfig()
    assert config.limits == LimitsConfig()
    assert config.source is None


def test_full_config() -> None:
    config = parse(
        """
        listen: "[::1]:0"
        workers: 4
        strategy: my.pkg.mod:MyStrategy
        strategy_options:
          alpha: 0.5
          tiers: [gold, silver]
        preserve_host: true
        backends:
          - name: mcp-a
            url: https://mcp.example.com/api/
            weight: 0
          - name: B_2.x
            url: http://[fe80::1]:9002
            weight: 1000
        sticky:
          mcp_sessions: false
          session_ttl: 1h30m
          max_sessions: 5
        timeouts:
          connect: 250ms
          header: 1.5s
          upstream_header: 2m
          idle: 1h
          upstream_keepalive: 3
          grace: 0.5
        limits:
          max_header_bytes: 8KiB
          max_body_bytes: 0
        """
    )
    assert (config.listen_host, config.listen_port) == ("::1", 0)
    assert config.workers == 4
    assert config.strategy == "my.pkg.mod:MyStrategy"
    assert config.strategy_options == {"alpha": 0.5, "tiers": ["gold", "silver"]}
    assert config.preserve_host is True
    assert config.backends == (
        BackendConfig(
            "mcp-a", "https://mcp.example.com/api", "https", "mcp.example.com", 443, "/api", 0
        ),
        BackendConfig("B_2.x", "http://[fe80::1]:9002", "http", "fe80::1", 9002, "", 1000),
    )
    assert config.sticky == StickyConfig(mcp_sessions=False, session_ttl=5400.0, max_sessions=5)
    assert config.timeouts == TimeoutsConfig(
        connect=0.25,
        header=1.5,
        upstream_header=120.0,
        idle=3600.0,
        upstream_keepalive=3.0,
        grace=0.5,
    )
    assert config.limits == LimitsConfig(max_header_bytes=8192, max_body_bytes=0)


def test_lines_maps_every_path_to_its_line() -> None:
    config = parse(
        """
        # comment
        listen: 127.0.0.1:8080
        strategy: round_robin
        strategy_options:
          k: [1, 2]
        backends:
          - name: a
            url: http://h:1
          - name: b

            url:
              http://h:2
        timeouts: {connect: 1s}
        """
    )
    assert config.lines == {
        "listen": 2,
        "strategy": 3,
        "strategy_options": 4,
        "strategy_options.k": 5,
        "strategy_options.k[0]": 5,
        "strategy_options.k[1]": 5,
        "backends": 6,
        "backends[0]": 7,
        "backends[0].name": 7,
        "backends[0].url": 8,
        "backends[1]": 9,
        "backends[1].name": 9,
        "backends[1].url": 11,
        "timeouts": 13,
        "timeouts.connect": 13,
    }


def test_null_sections_mean_defaults() -> None:
    config = parse(BACKEND + "sticky:\ntimeouts:\nlimits: ~\nstrategy_options:\n")
    assert config.sticky == StickyConfig()
    assert config.timeouts == TimeoutsConfig()
    assert config.limits == LimitsConfig()
    assert config.strategy_options == {}


def test_example_file_loads_with_defaults() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.source == str(EXAMPLE)
    assert [(b.name, b.url, b.port, b.path_prefix) for b in config.backends] == [
        ("mcp-a", "http://127.0.0.1:9001", 9001, ""),
        ("mcp-b", "http://127.0.0.1:9002", 9002, ""),
        ("mcp-c", "http://127.0.0.1:9003", 9003, ""),
    ]
    defaults = Config()
    assert (config.listen_host, config.listen_port) == (defaults.listen_host, defaults.listen_port)
    assert config.workers == defaults.workers
    assert config.strategy == defaults.strategy
    assert config.strategy_options == {}
    assert config.preserve_host is defaults.preserve_host
    assert config.sticky == StickyConfig()
    assert config.timeouts == TimeoutsConfig()
    assert config.limits == LimitsConfig()
    assert config.health == HealthConfig()
    assert config.retries == RetriesConfig()
    assert (config.rate_limit, config.listen_tls, config.watch_config) == (None, None, False)
    for backend in config.backends:
        assert (backend.max_connections, backend.max_streams) == (None, None)
        assert (backend.ca, backend.verify) == (None, True)


def test_example_file_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = [
        "listen", "workers", "strategy", "strategy_options", "preserve_host", "backends",
        "name", "url", "weight", "sticky", "mcp_sessions", "session_ttl", "max_sessions",
        "store", "keys", "redis", "timeout", "prefix", "cookie", "ttl", "secure", "http_only",
        "same_site", "header",
        "timeouts", "connect", "header", "upstream_header", "idle", "upstream_keepalive",
        "grace", "limits", "max_header_bytes", "max_body_bytes",
        "health", "initial", "panic", "slow_start", "active", "enabled", "type", "path",
        "method", "expect_status", "expect_tools", "interval", "timeout", "rise", "fall",
        "fast_interval", "down_interval", "passive", "consecutive_failures", "on_5xx",
        "ejection_time", "max_ejection_time", "ejection_memory", "max_ejection_percent",
        "max_connections", "max_streams", "ca", "verify", "max_in_flight", "max_queue",
        "queue_timeout", "retries", "attempts", "budget_percent", "on", "non_idempotent",
        "rate_limit", "rate", "burst", "key", "trusted_proxies", "listen_tls", "cert",
        "watch_config", "shutdown_delay", "discovery", "dns", "record", "port", "scheme",
        "resolvers",
    ]  # fmt: skip
    for key in keys:
        assert f"{key}:" in text, key


def test_load_config_sets_source(tmp_path: Path) -> None:
    path = tmp_path / "mcplb.yaml"
    path.write_text("workers: 2\n" + BACKEND + NO_SESSIONS)
    config = load_config(path, environ={})
    assert config.source == str(path)
    assert config.workers == 2
    assert config.lines["backends[0].url"] == 4


def test_load_config_errors_carry_source(tmp_path: Path) -> None:
    path = tmp_path / "mcplb.yaml"
    path.write_text("workers: 0\n" + BACKEND)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    assert info.value.source == str(path)
    assert str(info.value) == 'workers: must be an integer >= 1 or "auto" (line 1)'


# --- file, document and YAML level errors -------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.issues == [
        ConfigIssue("", f"cannot read {path}: No such file or directory", None)
    ]


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"cannot read {tmp_path}: Is a directory"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"strategy: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"cannot read {path}: not UTF-8 text (invalid continuation byte at byte 13)"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_document(text: str) -> None:
    assert error(text) == 'the config is empty (at least "backends" is required)'


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n", "list"), ("hello\n", "string"), ("42\n", "integer"), ("~\n", "null")],
)
def test_root_must_be_a_mapping(text: str, kind: str) -> None:
    assert error(text) == f"the top level must be a mapping of settings, not a {kind} (line 1)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BACKEND + "  weight: 2\n",
            "invalid YAML at column 3: expected <block end>, but found '?' (line 4)",
        ),
        (
            'workers: 1\nlisten: "abc\n',
            "invalid YAML at column 1: found unexpected end of stream (line 3)",
        ),
        (
            "workers: 1\na: b: c\n",
            "invalid YAML at column 5: mapping values are not allowed here (line 2)",
        ),
        (
            "workers: 1\n\tbad: 2\n",
            "invalid YAML at column 1: found character '\\t' that cannot start any token (line 2)",
        ),
        (
            BACKEND + "---\nworkers: 2\n",
            "invalid YAML at column 1: expected a single document in the stream"
            " but found another document (line 4)",
        ),
        (
            "workers: 1\nstrategy: a\x00b\n",
            "invalid YAML at column 12: character #x0000: special characters are not allowed"
            " (line 2)",
        ),
    ],
)
def test_yaml_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    assert [str(issue) for issue in info.value.issues] == [message]
    assert info.value.issues[0].path == ""


def test_too_deeply_nested_document() -> None:
    text = "strategy_options: " + "[" * 600 + "]" * 600 + "\n" + BACKEND
    assert error(text) == "the document is nested too deeply"


# --- keys ---------------------------------------------------------------------


def test_unknown_top_level_key_with_hint() -> None:
    assert (
        error(with_top("listn: 127.0.0.1:80"))
        == 'listn: unknown key (did you mean "listen"?) (line 1)'
    )


def test_unknown_top_level_key_without_close_match() -> None:
    assert error(with_top("zzz: 1")) == (
        "zzz: unknown key (expected one of: listen, workers, strategy, strategy_options, "
        "preserve_host, allowed_hosts, backends, sticky, timeouts, limits, health, admin, log, "
        "retries, rate_limit, listen_tls, watch_config, discovery) (line 1)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BACKEND + "timeouts:\n  conect: 2s\n",
            'timeouts.conect: unknown key (did you mean "connect"?) (line 5)',
        ),
        (
            BACKEND + "sticky: {session_tl: 5s}\n",
            'sticky.session_tl: unknown key (did you mean "session_ttl"?) (line 4)',
        ),
        (
            BACKEND + "limits: {max_body: 5}\n",
            'limits.max_body: unknown key (did you mean "max_body_bytes"?) (line 4)',
        ),
        (
            with_backend("    weigth: 2\n"),
            'backends[0].weigth: unknown key (did you mean "weight"?) (line 4)',
        ),
        (
            with_backend("    zzz: 2\n"),
            "backends[0].zzz: unknown key (expected one of: name, url, weight, max_sessions,"
            " max_connections, max_streams, ca, verify) (line 4)",
        ),
        (
            with_backend("    1: 2\n"),
            "backends[0].1: unknown key (expected one of: name, url, weight, max_sessions,"
            " max_connections, max_streams, ca, verify) (line 4)",
        ),
    ],
)
def test_unknown_nested_keys(text: str, message: str) -> None:
    assert error(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "workers: 1\n" + BACKEND + "workers: 2\n",
            "workers: duplicate key (first defined on line 1) (line 5)",
        ),
        (
            with_backend("    name: b\n"),
            "backends[0].name: duplicate key (first defined on line 2) (line 4)",
        ),
        (
            BACKEND + "timeouts: {idle: 1s, idle: 2s}\n",
            "timeouts.idle: duplicate key (first defined on line 4) (line 4)",
        ),
        (
            BACKEND + "strategy_options:\n  x: 1\n  'x': 2\n",
            "strategy_options.x: duplicate key (first defined on line 5) (line 6)",
        ),
    ],
)
def test_duplicate_keys(text: str, message: str) -> None:
    assert error(text) == message


def test_duplicate_key_keeps_first_value_and_reports() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("workers: 1\nworkers: 0\n" + BACKEND, environ={})
    # The second value is not validated: only the duplicate is reported.
    assert [str(i) for i in info.value.issues] == [
        "workers: duplicate key (first defined on line 1) (line 2)"
    ]


def test_complex_key_is_an_error() -> None:
    assert (
        error(BACKEND + "? [a, b]\n: 1\n")
        == "a key must be a scalar, not a list or mapping (line 4)"
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


DURATION_HINT = 'expected seconds or a number with unit ms, s, m or h (e.g. "250ms", "2s", "1m30s")'
SIZE_HINT = (
    "expected bytes, optionally with a unit: B, KB/MB/GB (powers of 1000) "
    'or KiB/MiB/GiB (powers of 1024), e.g. "64KiB"'
)
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


# --- sticky, timeouts, limits -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("mcp_sessions: 'yes'", "sticky.mcp_sessions: must be a boolean (true or false, unquoted)"),
        ("mcp_sessions: 1", "sticky.mcp_sessions: must be a boolean (true or false, unquoted)"),
        ("session_ttl: 0", "sticky.session_ttl: must be greater than 0"),
        ("session_ttl: 0s", "sticky.session_ttl: must be greater than 0"),
        ("session_ttl: -5", "sticky.session_ttl: invalid duration -5: must not be negative"),
        (
            "session_ttl: soon",
            'sticky.session_ttl: invalid duration "soon": expected seconds or a number with unit'
            ' ms, s, m or h (e.g. "250ms", "2s", "1m30s")',
        ),
        ("max_sessions: 0", "sticky.max_sessions: must be an integer >= 1"),
        ("max_sessions: 1.0", "sticky.max_sessions: must be an integer >= 1"),
        ("max_sessions: '10'", "sticky.max_sessions: must be an integer >= 1"),
    ],
)
def test_sticky_invalid(line: str, message: str) -> None:
    assert error(BACKEND + f"sticky:\n  {line}\n") == f"{message} (line 5)"


# --- sticky: stores, keys, redis, cookie, header ------------------------------

KEY_1 = "k1-" + "1" * 40
KEY_2 = "k2-" + "2" * 40
KEYS_EG = 'e.g. keys: ["${MCPLB_SESSION_KEY}"] with a random secret of at least 32 characters'
BY_WORKERS = (
    "store: signed, the default with workers > 1",
    "; or use store: redis, or mcp_sessions: false for backends without MCP sessions",
)
TOKEN_CHARS = "letters, digits and !#$%&'*+-.^_`|~"


def sticky_doc(body: str, workers: int | str = 1) -> str:
    """workers on line 1, BACKEND on lines 2-4, "sticky:" on line 5, ``body`` from line 6."""
    return f"workers: {workers}\n" + BACKEND + "sticky:\n" + textwrap.indent(doc(body), "  ")


def test_sticky_defaults() -> None:
    sticky = parse(BACKEND).sticky
    assert sticky == StickyConfig()
    assert (sticky.store, sticky.keys, sticky.cookie, sticky.header) == ("memory", (), None, None)
    assert sticky.redis == RedisConfig("redis://127.0.0.1:6379/0", 0.25, "mcplb:session:")
    assert CookieConfig() == CookieConfig("mcplb_backend", None, False, True, "Lax")


def test_sticky_full() -> None:
    body = """
        mcp_sessions: true
        session_ttl: 10m
        max_sessions: 500
        store: redis
        keys: ["${K1}", "${K2}"]
        redis:
          url: rediss://:pw@redis.example.com:6380/2
          timeout: 100ms
          prefix: "lb:"
        cookie:
          name: lb
          ttl: 1h
          secure: true
          http_only: false
          same_site: None
        header: X-Tenant-Id
        """
    config = parse(sticky_doc(body, workers=3), K1=KEY_1, K2=KEY_2)
    assert config.sticky == StickyConfig(
        mcp_sessions=True,
        session_ttl=600.0,
        max_sessions=500,
        store="redis",
        keys=(KEY_1, KEY_2),
        redis=RedisConfig("rediss://:pw@redis.example.com:6380/2", 0.1, "lb:"),
        cookie=CookieConfig("lb", 3600.0, True, False, "None"),
        header="x-tenant-id",
    )
    assert config.lines["sticky.redis.prefix"] == 14
    assert config.lines["sticky.cookie.same_site"] == 20


@pytest.mark.parametrize(
    ("workers", "body", "store"),
    [
        (1, "", "memory"),
        (4, "keys: ['${K1}']", "signed"),
        (4, "mcp_sessions: false", "memory"),  # the store is never used: no keys needed
        (4, "mcp_sessions: false\nstore: memory", "memory"),
        (4, "store: redis", "redis"),
        (1, "store: signed\nkeys: ['${K1}']", "signed"),
        (1, "store: redis", "redis"),
        (1, "mcp_sessions: false\nstore: redis", "redis"),
        ("auto", "store: redis", "redis"),
    ],
)
def test_sticky_store_resolution(workers: int | str, body: str, store: str) -> None:
    assert parse(sticky_doc(body, workers), K1=KEY_1).sticky.store == store


def test_memory_store_refused_with_several_workers() -> None:
    assert error(sticky_doc("session_ttl: 5m\nstore: memory", 4)) == (
        'sticky.store: "memory" cannot serve 4 workers: each worker process has its own memory'
        " and a client's connections spread over all workers, so most workers would not know"
        " its session; use store: signed (session ids carry their backend, signed with keys)"
        " or store: redis (shared) (line 7)"
    )


def test_default_signed_store_needs_keys() -> None:
    expected = f"sticky.keys: required by {BY_WORKERS[0]} ({KEYS_EG}){BY_WORKERS[1]} (line 1)"
    assert error(sticky_doc("", 4)) == expected
    assert error(sticky_doc("session_ttl: 5m", 4)) == expected
    assert error("workers: 4\n" + BACKEND) == expected  # no sticky section at all
    assert error(BACKEND + "workers: 2\n") == expected.replace("(line 1)", "(line 4)")


def test_auto_workers_count_as_several_for_the_store() -> None:
    """Whether a file is valid does not depend on the CPUs of the machine checking it."""
    by_auto = BY_WORKERS[0].replace("workers > 1", "workers: auto")
    assert error(sticky_doc("", "auto")) == (
        f"sticky.keys: required by {by_auto} ({KEYS_EG}){BY_WORKERS[1]} (line 1)"
    )
    assert parse(sticky_doc("keys: ['${K1}']", "auto"), K1=KEY_1).sticky.store == "signed"
    assert error(sticky_doc("store: memory", "auto")).startswith(
        'sticky.store: "memory" cannot serve a worker per CPU (workers: auto): each worker'
    )


def test_explicit_signed_store_needs_keys() -> None:
    message = f"sticky.keys: required by store: signed ({KEYS_EG})"
    assert error(sticky_doc("store: signed")) == f"{message} (line 6)"
    assert error(sticky_doc("store: signed\nkeys: []")) == f"{message} (line 7)"
    # Named explicitly, it is refused without keys even while mcp_sessions is false: a loaded
    # config with store "signed" always has keys.
    assert error(sticky_doc("mcp_sessions: false\nstore: signed")) == f"{message} (line 7)"


def test_cookie_needs_keys() -> None:
    message = f"sticky.keys: required by cookie ({KEYS_EG})"
    assert error(sticky_doc("cookie: {name: lb}")) == f"{message} (line 6)"
    assert error(sticky_doc("header: x-a\ncookie:")) == f"{message} (line 7)"
    assert error(sticky_doc("mcp_sessions: false\ncookie:", 4)) == f"{message} (line 7)"
    assert error(sticky_doc("store: redis\nkeys: []\ncookie:", 4)) == f"{message} (line 7)"
    both = f"{BY_WORKERS[0]} and by cookie ({KEYS_EG}){BY_WORKERS[1]}"
    assert (
        error(sticky_doc("header: x-a\ncookie:", 2)) == f"sticky.keys: required by {both} (line 7)"
    )
    explicit = f"sticky.keys: required by store: signed and by cookie ({KEYS_EG}) (line 6)"
    assert error(sticky_doc("store: signed\ncookie:")) == explicit


def test_unused_keys_are_checked_and_kept() -> None:
    assert parse(sticky_doc("keys: ['${K1}']"), K1=KEY_1).sticky.keys == (KEY_1,)
    assert parse(sticky_doc("keys: ${K1}"), K1=KEY_1).sticky.keys == (KEY_1,)  # one, unbracketed
    assert error(sticky_doc("keys: [short]")) == (
        "sticky.keys[0]: must be at least 32 characters long (this one has 5) (line 6)"
    )


def test_keys_are_checked_one_by_one_without_echoing_them() -> None:
    text = sticky_doc("store: signed\nkeys:\n  - ${K1}\n  - short-secret\n  - 12345\n  - ''", 4)
    found = errors(text, K1=KEY_1)
    assert found == [
        "sticky.keys[1]: must be at least 32 characters long (this one has 12) (line 9)",
        "sticky.keys[2]: must be a string (quote it), at least 32 characters (line 10)",
        "sticky.keys[3]: must be at least 32 characters long (this one has 0) (line 11)",
    ]  # and no "required" error on top
    assert not any("short-secret" in message for message in found)


def test_duplicate_sticky_keys() -> None:
    found = errors(sticky_doc("keys: ['${K1}', '${K2}', '${K1}']"), K1=KEY_1, K2=KEY_2)
    assert found == ["sticky.keys[2]: duplicate of keys[0] (each key must be different) (line 6)"]
    assert KEY_1 not in found[0]


def test_keys_other_errors_have_no_knock_on_errors() -> None:
    assert error(sticky_doc("keys: {a: b}", 4)) == (
        f"sticky.keys: must be a list of secrets, {KEYS_EG} (line 6)"
    )
    assert error(sticky_doc("keys: ['${NOPE}']", 4)) == (
        'sticky.keys[0]: environment variable "NOPE" is not set'
        " (use ${NOPE:-default} for a default) (line 6)"
    )
    assert error(sticky_doc("store: disk", 4)) == (
        'sticky.store: must be one of "memory", "signed", "redis" (line 6)'
    )
    assert error(sticky_doc("mcp_sessions: 'no'", 4)) == (
        "sticky.mcp_sessions: must be a boolean (true or false, unquoted) (line 6)"
    )


def test_keys_are_not_in_repr() -> None:
    config = parse(sticky_doc("store: signed\nkeys: ['${K1}']"), K1=KEY_1)
    assert config.sticky.keys == (KEY_1,)
    assert KEY_1 not in repr(config)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("stroe: signed", 'sticky.stroe: unknown key (did you mean "store"?) (line 6)'),
        ("key: []", 'sticky.key: unknown key (did you mean "keys"?) (line 6)'),
        ("headers: x-a", 'sticky.headers: unknown key (did you mean "header"?) (line 6)'),
        (
            "store: redis\nredis: {ulr: 'redis://h'}",
            'sticky.redis.ulr: unknown key (did you mean "url"?) (line 7)',
        ),
        (
            "keys: ['${K1}']\ncookie: {same_sit: Lax}",
            'sticky.cookie.same_sit: unknown key (did you mean "same_site"?) (line 7)',
        ),
        (
            "redis: {port: 1}",
            "sticky.redis.port: unknown key (expected one of: url, timeout, prefix) (line 6)",
        ),
    ],
)
def test_sticky_unknown_keys(body: str, message: str) -> None:
    assert error(sticky_doc(body), K1=KEY_1) == message


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@h.example:6380/3",
        "redis://user:p%40ss@h/15",
        "'redis://[::1]:6379'",
        "redis://h:6379/0?socket_keepalive=true",
        "redis://redis_1/",
        "unix:///run/redis.sock",
        "unix://:pw@/tmp/r.sock?db=2",
    ],
)
def test_redis_url_valid(url: str) -> None:
    config = parse(sticky_doc(f"store: redis\nredis:\n  url: {url}"))
    assert config.sticky.redis.url == url.strip("'")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "scheme must be redis, rediss or unix"),
        ("h:6379", "scheme must be redis, rediss or unix"),
        ("redis://", "host is missing"),
        ("redis://h:0", "port must be a number between 1 and 65535"),
        ("redis://h:99999/0", "port must be a number between 1 and 65535"),
        ("redis://h/zero", 'the path must be a database number, e.g. "redis://127.0.0.1:6379/0"'),
        ("redis://h/0#x", "must not have a fragment"),
        ("'redis://h /0'", "must not contain whitespace or control characters"),
        ("'redis://[::1'", "cannot be parsed as a URL"),
        ("redis://:hunter2@bad!host/0", 'invalid host "bad!host"'),
        (
            "unix://run/redis.sock",
            'must be "unix://" then the socket\'s absolute path, e.g. "unix:///run/redis.sock"',
        ),
        (
            "'unix:'",
            'must be "unix://" then the socket\'s absolute path, e.g. "unix:///run/redis.sock"',
        ),
        (
            "6379",
            'must be a Redis URL: "redis://HOST[:PORT][/DB]", "rediss://..." (TLS)'
            ' or "unix:///PATH/TO/SOCKET"',
        ),
    ],
)
def test_redis_url_invalid(url: str, message: str) -> None:
    found = error(sticky_doc(f"store: redis\nredis:\n  url: {url}"))
    assert found == f"sticky.redis.url: {message} (line 8)"
    assert "hunter2" not in found  # a password in the URL is never repeated


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("timeout: 0", "sticky.redis.timeout: must be greater than 0"),
        (
            "timeout: 5001ms",
            "sticky.redis.timeout: must be at most 5s (every request that carries a session"
            " may wait this long for Redis)",
        ),
        ("prefix: ''", 'sticky.redis.prefix: must be a non-empty string, e.g. "mcplb:session:"'),
        ("prefix: 7", 'sticky.redis.prefix: must be a non-empty string, e.g. "mcplb:session:"'),
    ],
)
def test_redis_settings_invalid(line: str, message: str) -> None:
    assert error(sticky_doc(f"store: redis\nredis:\n  {line}")) == f"{message} (line 8)"


def test_redis_timeout_limits() -> None:
    assert parse(sticky_doc("store: redis\nredis: {timeout: 5s}")).sticky.redis.timeout == 5.0
    assert parse(sticky_doc("store: redis\nredis: {timeout: 1ms}")).sticky.redis.timeout == 0.001


def test_redis_settings_refused_with_another_store() -> None:
    body = "redis:\n  url: redis://r:6379/0\n  timeout: 1s\n  prefix: 'lb:'"
    assert errors(sticky_doc(body)) == [
        f'sticky.redis.{key}: only used when store is "redis" (the store is "memory") (line {n})'
        for n, key in enumerate(("url", "timeout", "prefix"), 7)
    ]
    signed = sticky_doc("keys: ['${K1}']\nredis: {prefix: 'lb:'}", 4)
    assert error(signed, K1=KEY_1) == (
        'sticky.redis.prefix: only used when store is "redis" (the store is "signed") (line 7)'
    )
    # The defaults written out (an uncommented example) are not refused.
    body = "redis:\n  url: redis://127.0.0.1:6379/0\n  timeout: 250ms\n  prefix: 'mcplb:session:'"
    assert parse(sticky_doc(body)).sticky.redis == RedisConfig()
    assert parse(sticky_doc("redis:")).sticky.redis == RedisConfig()


def cookie_doc(body: str) -> str:
    """Keys on line 6, "cookie:" on line 7, ``body`` from line 8."""
    return sticky_doc("keys: ['${K1}']\ncookie:\n" + textwrap.indent(doc(body), "  "))


def test_cookie_defaults_and_values() -> None:
    assert parse(cookie_doc(""), K1=KEY_1).sticky.cookie == CookieConfig()
    assert parse(sticky_doc("keys: ['${K1}']\ncookie: {}"), K1=KEY_1).sticky.cookie == (
        CookieConfig()
    )
    body = "name: __Host-lb\nttl: 90\nsecure: true\nsame_site: strict"
    assert parse(cookie_doc(body), K1=KEY_1).sticky.cookie == CookieConfig(
        "__Host-lb", 90.0, True, True, "Strict"
    )
    assert parse(cookie_doc("ttl: null\nsame_site: LAX"), K1=KEY_1).sticky.cookie == (
        CookieConfig()
    )
    body = 'name: "!#$%&\'*+-.^_`|~Az09"\nsecure: true\nsame_site: None'
    cookie = parse(cookie_doc(body), K1=KEY_1).sticky.cookie
    assert cookie is not None
    assert (cookie.name, cookie.same_site) == ("!#$%&'*+-.^_`|~Az09", "None")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "same_site: None",
            'sticky.cookie.same_site: SameSite "None" requires secure: true'
            " (browsers drop such cookies) (line 8)",
        ),
        (
            "secure: false\nsame_site: none",
            'sticky.cookie.same_site: SameSite "None" requires secure: true'
            " (browsers drop such cookies) (line 9)",
        ),
        (
            "name: __Secure-lb",
            'sticky.cookie.name: a name starting with "__Secure-" requires secure: true (line 8)',
        ),
        (
            "name: __Host-lb",
            'sticky.cookie.name: a name starting with "__Host-" requires secure: true (line 8)',
        ),
        ("name: a b", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("name: 'a;b'", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("name: ''", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("name: 5", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("ttl: 0", "sticky.cookie.ttl: must be greater than 0 (line 8)"),
        (
            "same_site: sometimes",
            'sticky.cookie.same_site: must be "Lax", "Strict" or "None" (line 8)',
        ),
        (
            "http_only: 'yes'",
            "sticky.cookie.http_only: must be a boolean (true or false, unquoted) (line 8)",
        ),
        # An invalid "secure" is reported once, with no guess about SameSite=None.
        (
            "secure: 1\nsame_site: None",
            "sticky.cookie.secure: must be a boolean (true or false, unquoted) (line 8)",
        ),
    ],
)
def test_cookie_invalid(body: str, message: str) -> None:
    assert error(cookie_doc(body), K1=KEY_1) == message


def test_cookie_not_a_mapping() -> None:
    # Reported once: no "keys required by cookie" on top.
    assert error(sticky_doc("cookie: true")) == "sticky.cookie: must be a mapping (line 6)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("X-Tenant-Id", "x-tenant-id"), ("x_user", "x_user"), ("null", None), ("~", None)],
)
def test_header_valid(value: str, expected: str | None) -> None:
    assert parse(sticky_doc(f"header: {value}")).sticky.header == expected


@pytest.mark.parametrize("value", ["X Tenant", "''", "5", "'a:b'", "[x]", "'x\u00e9'"])
def test_header_invalid(value: str) -> None:
    assert error(sticky_doc(f"header: {value}")) == (
        f'sticky.header: must be a header name ({TOKEN_CHARS}), e.g. "X-Tenant-Id" (line 6)'
    )


def test_header_cannot_be_the_session_header() -> None:
    assert error(sticky_doc("mcp_sessions: false\nheader: MCP-Session-Id")) == (
        "sticky.header: cannot be Mcp-Session-Id: a backend mints it after the routing"
        " decision (mcp_sessions routes requests that carry it) (line 7)"
    )


def test_sticky_issues_are_gathered() -> None:
    body = """
        store: memory
        keys: [short]
        redis: {timeout: 9s}
        cookie:
          same_site: None
          name: "a b"
        header: "X Y"
        """
    assert errors(sticky_doc(body, 4)) == [
        'sticky.store: "memory" cannot serve 4 workers: each worker process has its own memory'
        " and a client's connections spread over all workers, so most workers would not know"
        " its session; use store: signed (session ids carry their backend, signed with keys)"
        " or store: redis (shared) (line 6)",
        "sticky.keys[0]: must be at least 32 characters long (this one has 5) (line 7)",
        "sticky.redis.timeout: must be at most 5s (every request that carries a session may"
        " wait this long for Redis) (line 8)",
        'sticky.cookie.same_site: SameSite "None" requires secure: true'
        " (browsers drop such cookies) (line 10)",
        f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 11)",
        f'sticky.header: must be a header name ({TOKEN_CHARS}), e.g. "X-Tenant-Id" (line 12)',
    ]


def test_example_sticky_section_uncommented_loads() -> None:
    text = EXAMPLE.read_text()
    start, end = text.index("\nsticky:\n"), text.index("\n# Timeouts")
    section = re.sub(r"^  # (keys|redis|cookie):", r"  \1:", text[start:end], flags=re.M)
    keys = "url|timeout|prefix|name|ttl|secure|http_only|same_site"
    section = re.sub(rf"^  #   ({keys}):", r"    \1:", section, flags=re.M)
    assert section.count("\n  #") < text[start:end].count("\n  #") - 10  # it did uncomment
    config = parse_config(text[:start] + section + text[end:], environ={"MCPLB_SESSION_KEY": KEY_1})
    assert config.sticky == StickyConfig(keys=(KEY_1,), cookie=CookieConfig())


@pytest.mark.parametrize("value", ["[]", "true", "on"])
def test_sections_must_be_mappings(value: str) -> None:
    for section in ("sticky", "timeouts", "limits", "retries", "rate_limit", "listen_tls"):
        assert error(with_top(f"{section}: {value}")) == f"{section}: must be a mapping (line 1)"


TIMEOUT_KEYS = ["connect", "header", "upstream_header", "idle", "upstream_keepalive", "grace"]


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
def test_timeouts_accept_durations(key: str) -> None:
    config = parse(BACKEND + f"timeouts:\n  {key}: 1m30s\n")
    assert getattr(config.timeouts, key) == 90.0


@pytest.mark.parametrize("key", TIMEOUT_KEYS)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be greater than 0"),
        ("0ms", "must be greater than 0"),
        ("-1", "invalid duration -1: must not be negative"),
        (
            "true",
            f"invalid duration: {DURATION_HINT}, got boolean",
        ),
        (".inf", "invalid duration: must be a finite number of seconds"),
        (
            "2x",
            f'invalid duration "2x": {DURATION_HINT}',
        ),
    ],
)
def test_timeouts_invalid(key: str, value: str, message: str) -> None:
    assert (
        error(BACKEND + f"timeouts:\n  {key}: {value}\n") == f"timeouts.{key}: {message} (line 5)"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1KiB", 1024), ("1024", 1024), ("1MiB", 1048576), ("1048576", 1048576), ("'8 k'", 8000)],
)
def test_max_header_bytes_valid(value: str, expected: int) -> None:
    assert (
        parse(BACKEND + f"limits:\n  max_header_bytes: {value}\n").limits.max_header_bytes
        == expected
    )


@pytest.mark.parametrize("value", ["1023", "1000B", "1049KB", "2MiB", "0"])
def test_max_header_bytes_out_of_range(value: str) -> None:
    assert error(BACKEND + f"limits:\n  max_header_bytes: {value}\n") == (
        "limits.max_header_bytes: must be between 1KiB and 1MiB (1024 to 1048576 bytes) (line 5)"
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0), ("10MiB", 10485760), ("1GB", 10**9), ("512B", 512)]
)
def test_max_body_bytes_valid(value: str, expected: int) -> None:
    assert (
        parse(BACKEND + f"limits:\n  max_body_bytes: {value}\n").limits.max_body_bytes == expected
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "invalid size -1: must not be negative"),
        ("'1.5B'", 'invalid size "1.5B": not a whole number of bytes'),
        (
            "lots",
            f'invalid size "lots": {SIZE_HINT}',
        ),
        (
            "1.5",
            f"invalid size: {SIZE_HINT}, got float",
        ),
    ],
)
def test_max_body_bytes_invalid(value: str, message: str) -> None:
    assert (
        error(BACKEND + f"limits:\n  max_body_bytes: {value}\n")
        == f"limits.max_body_bytes: {message} (line 5)"
    )


# --- durations and sizes ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 2 s ", 2.0),
        ("3", 3.0),
        ("0.1", 0.1),
        ("100ms", 0.1),
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration_valid(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert type(parse_duration(value)) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2x", 'invalid duration "2x"'),
        ("", 'invalid duration ""'),
        ("s", 'invalid duration "s"'),
        ("-1s", 'invalid duration "-1s"'),
        ("2S", 'invalid duration "2S"'),
        ("1d", 'invalid duration "1d"'),
        ("1e3", 'invalid duration "1e3"'),
        (-1, "invalid duration -1: must not be negative"),
        (float("nan"), "invalid duration: must be a finite number of seconds"),
        (float("inf"), "invalid duration: must be a finite number of seconds"),
        (10**400, "invalid duration: must be a finite number of seconds"),
        ("9" * 400 + "h", "invalid duration: must be a finite number of seconds"),
        (True, "invalid duration: expected seconds"),
        (None, "invalid duration: expected seconds"),
        ([1], "invalid duration: expected seconds"),
    ],
)
def test_parse_duration_invalid(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (65536, 65536),
        ("512", 512),
        ("512B", 512),
        ("1k", 1000),
        ("1K", 1000),
        ("1kb", 1000),
        ("10MB", 10_000_000),
        ("1GB", 10**9),
        ("1Ki", 1024),
        ("64KiB", 65536),
        ("10MiB", 10_485_760),
        ("1GiB", 2**30),
        ("1TiB", 2**40),
        ("1.5KiB", 1536),
        ("0.5k", 500),
        (" 7 kib ", 7168),
    ],
)
def test_parse_size_valid(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1XB", 'invalid size "1XB": expected bytes'),
        ("", 'invalid size "": expected bytes'),
        ("KiB", 'invalid size "KiB": expected bytes'),
        ("-5", 'invalid size "-5": expected bytes'),
        ("1.3B", 'invalid size "1.3B": not a whole number of bytes'),
        ("0.1KiB", 'invalid size "0.1KiB": not a whole number of bytes'),
        (-1, "invalid size -1: must not be negative"),
        (1.0, "invalid size: expected bytes"),
        (True, "invalid size: expected bytes"),
        (None, "invalid size: expected bytes"),
    ],
)
def test_parse_size_invalid(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value).startswith(message)


# --- environment variables ----------------------------------------------------


def test_env_set_and_default() -> None:
    text = """
        listen: ${HOST:-127.0.0.1}:${PORT}
        backends:
          - name: ${NAME:-mcp-a}
            url: http://${BACKEND_HOST}:9001/${PREFIX:-}
        """
    config = parse(text, PORT="9000", BACKEND_HOST="10.0.0.5")
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9000)
    assert config.backends[0].name == "mcp-a"
    assert config.backends[0].url == "http://10.0.0.5:9001"
    config = parse(text, HOST="0.0.0.0", PORT="1", NAME="x", BACKEND_HOST="h", PREFIX="p/")
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 1)
    assert (config.backends[0].name, config.backends[0].url) == ("x", "http://h:9001/p")


def test_env_default_applies_to_empty_value() -> None:
    assert parse(with_top("workers: ${W:-3}") + NO_SESSIONS, W="").workers == 3


def test_env_missing() -> None:
    text = "workers: ${WORKERS}\nbackends:\n  - name: a\n    url: http://${B_HOST}:1\n"
    assert errors(text) == [
        'workers: environment variable "WORKERS" is not set'
        " (use ${WORKERS:-default} for a default) (line 1)",
        'backends[0].url: environment variable "B_HOST" is not set'
        " (use ${B_HOST:-default} for a default) (line 4)",
    ]


def test_env_dollar_escape_and_literal_dollar() -> None:
    config = parse(
        BACKEND + "strategy_options:\n  a: $${HOME}\n  b: cost $5\n  c: a$$b\n  d: $\n",
        HOME="/root",
    )
    assert config.strategy_options == {"a": "${HOME}", "b": "cost $5", "c": "a$b", "d": "$"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${FOO", 'unterminated "${" (write "$$" for a literal "$")'),
        ("'${}'", 'invalid variable reference "${}"'),
        ("'${1X}'", 'invalid variable reference "${1X}"'),
        ("'${A-B}'", 'invalid variable reference "${A-B}"'),
    ],
)
def test_env_bad_references(value: str, message: str) -> None:
    assert (
        error(BACKEND + f"strategy_options:\n  x: {value}\n")
        == f"strategy_options.x: {message} (line 5)"
    )


def test_env_plain_scalars_are_re_resolved() -> None:
    text = """
        workers: ${WORKERS:-2}
        preserve_host: ${PRESERVE}
        backends:
          - name: a
            url: http://h
            weight: ${WEIGHT:-0x10}
        sticky:
          mcp_sessions: ${STICKY:-false}
          session_ttl: ${TTL:-90}
        strategy_options:
          ratio: ${RATIO:-0.5}
          nothing: ${NOTHING:-~}
          text: ${TEXT:-hello}
        """
    config = parse(text, PRESERVE="yes")
    assert config.workers == 2
    assert config.preserve_host is True
    assert config.backends[0].weight == 16
    assert config.sticky.mcp_sessions is False
    assert config.sticky.session_ttl == 90.0
    assert config.strategy_options == {"ratio": 0.5, "nothing": None, "text": "hello"}


def test_env_quoted_scalars_stay_strings() -> None:
    text = """
        backends:
          - name: "${NAME}"
            url: http://h
        strategy_options:
          single: '${N}'
          double: "${N}"
          block: |
            ${N}
          tagged: !!str ${N}
          anchored_tagged: &t !!str ${N}
          anchored: &u ${N}
        """
    config = parse(text, NAME="123", N="42")
    assert config.backends[0].name == "123"
    assert config.strategy_options == {
        "single": "42",
        "double": "42",
        "block": "42\n",
        "tagged": "42",
        "anchored_tagged": "42",
        "anchored": 42,
    }


def test_env_quoted_value_keeps_its_type_error() -> None:
    assert (
        error(with_top('workers: "${W}"'), W="4")
        == 'workers: must be an integer >= 1 or "auto" (line 1)'
    )


def test_env_keys_are_not_expanded() -> None:
    assert parse(BACKEND + "strategy_options:\n  ${K}: 1\n").strategy_options == {"${K}": 1}


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPLB_TEST_WORKERS", "7")
    config = parse_config(with_top("workers: ${MCPLB_TEST_WORKERS}") + NO_SESSIONS)
    assert config.workers == 7


def test_env_expanded_value_is_validated() -> None:
    assert (
        error(with_top("workers: ${W}"), W="0")
        == 'workers: must be an integer >= 1 or "auto" (line 1)'
    )


# --- YAML features: tags, anchors, merges -------------------------------------


def test_unsupported_and_malformed_tags() -> None:
    assert errors(BACKEND + "workers: !custom 3\nstrategy: !!int abc\nsticky: !!set {a}\n") == [
        'workers: unsupported YAML tag "!custom" (line 4)',
        'strategy: "abc" is not a valid !!int (line 5)',
        'sticky: unsupported YAML tag "!!set" (line 6)',
    ]


def test_explicit_int_tag() -> None:
    assert parse(with_top('workers: !!int "3"') + NO_SESSIONS).workers == 3


def test_merge_keys_and_aliases() -> None:
    config = parse(
        """
        backends:
          - &base
            name: a
            url: http://h:1
            weight: 5
          - <<: *base
            name: b
          - <<: [{weight: 7}, *base]
            name: c
            url: http://h:3
        """
    )
    assert [(b.name, b.url, b.weight) for b in config.backends] == [
        ("a", "http://h:1", 5),
        ("b", "http://h:1", 5),
        ("c", "http://h:3", 7),
    ]
    assert config.lines["backends[1].url"] == 4
    assert config.lines["backends[1].name"] == 7


def test_merge_needs_mappings() -> None:
    assert (
        error(with_backend("    <<: [1]\n"))
        == "backends[0].<<: a merge (<<) needs a mapping or a list of mappings (line 4)"
    )


def test_recursive_alias() -> None:
    assert error(BACKEND + "strategy_options:\n  a: &r [*r]\n") == (
        "strategy_options.a[0]: recursive alias (an anchor used inside itself) (line 5)"
    )


def test_plain_special_scalars_are_strings() -> None:
    assert parse(BACKEND + "strategy_options:\n  a: =\n  b: <<\n").strategy_options == {
        "a": "=",
        "b": "<<",
    }


# --- error reporting ----------------------------------------------------------


def test_all_issues_reported_together_in_line_order() -> None:
    text = """
        listen: localhost
        workers: 0
        strategy: round_robin
        backends:
          - name: mcp-a
            url: ftp://127.0.0.1:9001
          - name: mcp-a
            url: http://127.0.0.1:9002
            weight: 1001
        sticky:
          mcp_sessions: "true"
        timeouts:
          conect: 2s
          idle: ${IDLE}
        limits:
          max_header_bytes: 10
        """
    with pytest.raises(ConfigError) as info:
        parse_config(doc(text), source="mcplb.yaml", environ={})
    expected = [
        'listen: must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080" (line 1)',
        'workers: must be an integer >= 1 or "auto" (line 2)',
        "backends[0].url: scheme must be http or https (line 6)",
        'backends[1].name: duplicate backend name "mcp-a" (already used by backends[0]) (line 7)',
        "backends[1].weight: must be an integer between 0 and 1000 (line 9)",
        "sticky.mcp_sessions: must be a boolean (true or false, unquoted) (line 11)",
        'timeouts.conect: unknown key (did you mean "connect"?) (line 13)',
        'timeouts.idle: environment variable "IDLE" is not set'
        " (use ${IDLE:-default} for a default) (line 14)",
        "limits.max_header_bytes: must be between 1KiB and 1MiB (1024 to 1048576 bytes) (line 16)",
    ]
    assert [str(issue) for issue in info.value.issues] == expected
    assert str(info.value) == "\n".join(expected)
    assert info.value.source == "mcplb.yaml"
    assert info.value.issues[2] == ConfigIssue("backends[0].url", "scheme must be http or https", 6)


def test_config_issue_str() -> None:
    assert str(ConfigIssue("backends[1].url", "scheme must be http or https", 12)) == (
        "backends[1].url: scheme must be http or https (line 12)"
    )
    assert str(ConfigIssue("", "the config is empty", None)) == "the config is empty"
    assert str(ConfigIssue("workers", "bad", None)) == "workers: bad"
    assert str(ConfigIssue("", "bad YAML", 3)) == "bad YAML (line 3)"


def test_config_error_pickles() -> None:
    err = ConfigError([ConfigIssue("workers", "bad", 2)], "x.yaml")
    copy = pickle.loads(pickle.dumps(err))
    assert copy.issues == err.issues
    assert copy.source == "x.yaml"
    assert str(copy) == "workers: bad (line 2)"


def test_parse_config_source_is_recorded() -> None:
    assert parse_config(BACKEND, source="/etc/mcplb.yaml", environ={}).source == "/etc/mcplb.yaml"


# --- robustness ---------------------------------------------------------------

FRAGMENTS = [
    "listen: ", "workers: ", "backends:\n", "  - name: a\n", "    url: http://h:1\n", "sticky:",
    "timeouts: {", "}", "[", "]", "${X}", "${Y:-2}", "$$", "&a ", "*a", "<<: ", "!!int ", "!x ",
    "'", '"', "\n", "  ", "- ", ": ", "auto", "1", "-1", "1.5", "2s", "64KiB", "true", "~", "#",
    "---\n", "? ", ",", "|\n", "\t", "\x00", "é", "retries: {", "'on': ", "rate_limit: {",
    "rate: ", "600/m", "listen_tls: {", "cert: ", "watch_config: ", "max_in_flight: ", "[502]",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    )
)
def test_random_text_gives_config_or_config_error(text: str) -> None:
    try:
        config = parse_config(text, environ={"X": "1"})
    except ConfigError as exc:
        assert exc.issues
        assert all(isinstance(issue, ConfigIssue) for issue in exc.issues)
    else:
        assert isinstance(config, Config)
        assert config.backends


def test_backend_max_sessions() -> None:
    config = parse(with_backend("    max_sessions: 50\n"))
    assert config.backends[0].max_sessions == 50
    assert parse(BACKEND).backends[0].max_sessions is None
    assert error(with_backend("    max_sessions: 0\n")) == (
        "backends[0].max_sessions: must be an integer >= 1 (line 4)"
    )


# --- health -------------------------------------------------------------------


def health_doc(body: str) -> str:
    """BACKEND (lines 1-3) then "health:" on line 4 and ``body`` from line 5."""
    return BACKEND + "health:\n" + textwrap.indent(doc(body), "  ")


def test_health_defaults() -> None:
    health = parse(BACKEND).health
    assert health == HealthConfig()
    assert (health.initial, health.panic, health.slow_start) == ("healthy", "fail_closed", 0.0)
    assert health.active == ActiveHealthConfig(
        enabled=False,
        type="http",
        path="/",
        method="GET",
        expect_status=((200, 399),),
        expect_tools=(),
        interval=2.0,
        timeout=1.0,
        rise=2,
        fall=3,
        fast_interval=None,
        down_interval=None,
    )
    assert health.passive == PassiveHealthConfig(
        enabled=True,
        consecutive_failures=5,
        on_5xx=False,
        ejection_time=30.0,
        max_ejection_time=300.0,
        ejection_memory=600.0,
        max_ejection_percent=50,
    )
    assert parse(BACKEND + "health:\n").health == HealthConfig()
    assert parse(BACKEND + "health: {passive: ~}\n").health == HealthConfig()


@pytest.mark.parametrize("active", ["active:", "active: {}", "active: ~"])
def test_health_active_key_turns_probes_on(active: str) -> None:
    assert parse(health_doc(active)).health.active == ActiveHealthConfig(enabled=True)


def test_health_active_disabled_and_default_paths() -> None:
    off = parse(health_doc("active:\n  enabled: false\n  type: mcp\n")).health.active
    assert (off.enabled, off.type, off.path) == (False, "mcp", "/mcp")
    assert ActiveHealthConfig(type="mcp").path == "/mcp"
    assert ActiveHealthConfig().path == "/"
    assert ActiveHealthConfig(type="mcp", path="/x").path == "/x"


def test_health_full() -> None:
    config = parse(
        health_doc(
            """
            initial: unhealthy
            panic: fail_open
            slow_start: 1m
            active:
              enabled: true
              type: http
              path: /healthz?deep=1
              method: head
              expect_status: [200, 204-299, "404"]
              interval: 500ms
              timeout: 250ms
              rise: 1
              fall: 10
              fast_interval: 300ms
              down_interval: 5s
            passive:
              enabled: false
              consecutive_failures: 1
              on_5xx: true
              ejection_time: 10s
              max_ejection_time: 10s
              ejection_memory: 0
              max_ejection_percent: 100
            """
        )
    )
    assert config.health == HealthConfig(
        initial="unhealthy",
        panic="fail_open",
        slow_start=60.0,
        active=ActiveHealthConfig(
            enabled=True,
            type="http",
            path="/healthz?deep=1",
            method="HEAD",
            expect_status=((200, 200), (204, 299), (404, 404)),
            interval=0.5,
            timeout=0.25,
            rise=1,
            fall=10,
            fast_interval=0.3,
            down_interval=5.0,
        ),
        passive=PassiveHealthConfig(
            enabled=False,
            consecutive_failures=1,
            on_5xx=True,
            ejection_time=10.0,
            max_ejection_time=10.0,
            ejection_memory=0.0,
            max_ejection_percent=100,
        ),
    )
    assert config.lines["health.active.expect_status[1]"] == 13
    assert config.lines["health.passive.max_ejection_percent"] == 27


def test_health_mcp_probe() -> None:
    active = parse(
        health_doc(
            """
            active:
              type: mcp
              expect_tools: [whoami, countdown, whoami]
              expect_status: [200-399]  # the default: tolerated for an mcp probe
              method: GET
            """
        )
    ).health.active
    assert (active.type, active.path, active.expect_tools) == (
        "mcp",
        "/mcp",
        ("whoami", "countdown"),
    )
    single = parse(health_doc("active:\n  expect_status: 200-299\n")).health.active
    assert single.expect_status == ((200, 299),)


def test_health_example_block_uncommented() -> None:
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# health:")
    block = [line.removeprefix("# ") for line in lines[start:]]
    text = "\n".join(lines[:start] + block) + "\n"
    health = parse_config(text, environ={}).health
    assert health == HealthConfig(active=ActiveHealthConfig(enabled=True))
    mcp = parse_config(text.replace("    type: http", "    type: mcp"), environ={}).health
    assert (mcp.active.type, mcp.active.path) == ("mcp", "/mcp")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("initial: up", 'health.initial: must be "healthy" or "unhealthy" (line 5)'),
        ("initial: true", 'health.initial: must be "healthy" or "unhealthy" (line 5)'),
        ("panic: open", 'health.panic: must be "fail_closed" or "fail_open" (line 5)'),
        ("slow_start: -1", "health.slow_start: invalid duration -1: must not be negative (line 5)"),
        (
            "slow_start: soon",
            f'health.slow_start: invalid duration "soon": {DURATION_HINT} (line 5)',
        ),
        (
            "slowstart: 1s",
            'health.slowstart: unknown key (did you mean "slow_start"?) (line 5)',
        ),
        (
            "zzz: 1",
            "health.zzz: unknown key (expected one of: initial, panic, slow_start, active, "
            "passive) (line 5)",
        ),
        ("active: true", "health.active: must be a mapping (line 5)"),
        ("passive: []", "health.passive: must be a mapping (line 5)"),
        (
            "active:\n  enable: false",
            'health.active.enable: unknown key (did you mean "enabled"?) (line 6)',
        ),
        (
            "active:\n  zzz: 1",
            "health.active.zzz: unknown key (expected one of: enabled, type, path, method, "
            "expect_status, expect_tools, interval, timeout, rise, fall, fast_interval, "
            "down_interval) (line 6)",
        ),
        (
            "active:\n  enabled: 'yes'",
            "health.active.enabled: must be a boolean (true or false, unquoted) (line 6)",
        ),
        ("active:\n  type: grpc", 'health.active.type: must be "http" or "mcp" (line 6)'),
        (
            "active:\n  path: healthz",
            'health.active.path: must be a path starting with "/", e.g. "/healthz" (line 6)',
        ),
        (
            "active:\n  path: 200",
            'health.active.path: must be a path starting with "/", e.g. "/healthz" (line 6)',
        ),
        (
            "active:\n  path: /caf\u00e9",
            "health.active.path: must be ASCII without whitespace or control characters"
            " (percent-encode others) (line 6)",
        ),
        (
            "active:\n  path: '/a b'",
            "health.active.path: must be ASCII without whitespace or control characters"
            " (percent-encode others) (line 6)",
        ),
        ("active:\n  path: '/a#b'", "health.active.path: must not have a fragment (line 6)"),
        ("active:\n  method: POST", "health.active.method: must be GET or HEAD (line 6)"),
        (
            "active:\n  type: mcp\n  method: HEAD",
            'health.active.method: only used when type is "http" (line 7)',
        ),
        (
            "active:\n  type: mcp\n  expect_status: [200]",
            'health.active.expect_status: only used when type is "http" (line 7)',
        ),
        (
            "active:\n  expect_tools: [add]",
            'health.active.expect_tools: only used when type is "mcp" (line 6)',
        ),
        ("active:\n  expect_status: []", "health.active.expect_status: must not be empty (line 6)"),
        (
            "active:\n  expect_status: {a: 1}",
            "health.active.expect_status: must be a list of status codes or ranges,"
            " e.g. [200-399] or [200, 204] (line 6)",
        ),
        (
            "active:\n  expect_status:",
            "health.active.expect_status: must be a list of status codes or ranges,"
            " e.g. [200-399] or [200, 204] (line 6)",
        ),
        (
            "active:\n  expect_status:\n    - 200\n    - 2xx",
            "health.active.expect_status[1]: must be a status code or a range of them,"
            ' e.g. 200 or "200-399" (line 8)',
        ),
        (
            "active:\n  expect_status: [200, true]",
            "health.active.expect_status[1]: must be a status code or a range of them,"
            ' e.g. 200 or "200-399" (line 6)',
        ),
        (
            "active:\n  expect_status: [99]",
            "health.active.expect_status[0]: status codes must be between 100 and 599 (line 6)",
        ),
        (
            "active:\n  expect_status: [200-600]",
            "health.active.expect_status[0]: status codes must be between 100 and 599 (line 6)",
        ),
        (
            "active:\n  expect_status: [399-200]",
            'health.active.expect_status[0]: invalid range "399-200": 399 is greater than 200'
            " (line 6)",
        ),
        (
            "active:\n  type: mcp\n  expect_tools: add",
            "health.active.expect_tools: must be a list of tool names (line 7)",
        ),
        (
            "active:\n  type: mcp\n  expect_tools: [add, '', 3]",
            "health.active.expect_tools[1]: must be a tool name (a non-empty string) (line 7)\n"
            "health.active.expect_tools[2]: must be a tool name (a non-empty string) (line 7)",
        ),
        ("active:\n  interval: 0", "health.active.interval: must be greater than 0 (line 6)"),
        (
            "active:\n  interval: 1s",
            "health.active.interval: must be greater than timeout (1s) (line 6)",
        ),
        (
            "active:\n  interval: 500ms",
            "health.active.interval: must be greater than timeout (1s) (line 6)",
        ),
        (
            "active:\n  timeout: 2s",
            "health.active.timeout: must be less than interval (2s) (line 6)",
        ),
        (
            "active:\n  interval: 250ms\n  timeout: 0.25",
            "health.active.timeout: must be less than interval (0.25s) (line 7)",
        ),
        (
            "active:\n  timeout: -1",
            "health.active.timeout: invalid duration -1: must not be negative (line 6)",
        ),
        ("active:\n  rise: 0", "health.active.rise: must be an integer >= 1 (line 6)"),
        ("active:\n  fall: 1.5", "health.active.fall: must be an integer >= 1 (line 6)"),
        ("active:\n  fall: '3'", "health.active.fall: must be an integer >= 1 (line 6)"),
        (
            "active:\n  fast_interval: 1s",
            "health.active.fast_interval: must be greater than timeout (1s) (line 6)",
        ),
        (
            "active:\n  timeout: 100ms\n  down_interval: 50ms",
            "health.active.down_interval: must be greater than timeout (0.1s) (line 7)",
        ),
        (
            "active:\n  down_interval: 0",
            "health.active.down_interval: must be greater than 0 (line 6)",
        ),
        (
            "passive:\n  enabled: 1",
            "health.passive.enabled: must be a boolean (true or false, unquoted) (line 6)",
        ),
        (
            "passive:\n  consecutive_failures: 0",
            "health.passive.consecutive_failures: must be an integer >= 1 (line 6)",
        ),
        (
            "passive:\n  on_5xx: 'no'",
            "health.passive.on_5xx: must be a boolean (true or false, unquoted) (line 6)",
        ),
        (
            "passive:\n  ejection_time: 0",
            "health.passive.ejection_time: must be greater than 0 (line 6)",
        ),
        (
            "passive:\n  ejection_time: 10m",
            "health.passive.ejection_time: must not be greater than max_ejection_time (300s)"
            " (line 6)",
        ),
        (
            "passive:\n  max_ejection_time: 20s",
            "health.passive.max_ejection_time: must not be less than ejection_time (30s) (line 6)",
        ),
        (
            "passive:\n  ejection_memory: -5",
            "health.passive.ejection_memory: invalid duration -5: must not be negative (line 6)",
        ),
        (
            "passive:\n  max_ejection_percent: 101",
            "health.passive.max_ejection_percent: must be an integer between 0 and 100 (line 6)",
        ),
        (
            "passive:\n  max_ejection_percent: 50%",
            "health.passive.max_ejection_percent: must be an integer between 0 and 100 (line 6)",
        ),
        (
            "passive:\n  on5xx: true",
            'health.passive.on5xx: unknown key (did you mean "on_5xx"?) (line 6)',
        ),
    ],
)
def test_health_invalid(body: str, message: str) -> None:
    assert "\n".join(errors(health_doc(body))) == message


def test_health_cross_checks_skip_invalid_values() -> None:
    # A bad value is reported once, not again by the comparisons that would use it.
    assert errors(health_doc("active:\n  interval: x\n  timeout: 5s\n  fast_interval: 1s\n")) == [
        f'health.active.interval: invalid duration "x": {DURATION_HINT} (line 6)',
        "health.active.fast_interval: must be greater than timeout (5s) (line 8)",
    ]
    assert errors(health_doc("active:\n  timeout: 0\n  interval: 0.1\n  down_interval: 1ms\n")) == [
        "health.active.timeout: must be greater than 0 (line 6)"
    ]
    assert errors(health_doc("active:\n  type: tcp\n  expect_tools: [a]\n  method: HEAD\n")) == [
        'health.active.type: must be "http" or "mcp" (line 6)'
    ]
    assert errors(health_doc("passive:\n  ejection_time: 1h\n  max_ejection_time: x\n")) == [
        f'health.passive.max_ejection_time: invalid duration "x": {DURATION_HINT} (line 7)'
    ]


def test_health_section_must_be_a_mapping() -> None:
    assert error(with_top("health: on")) == "health: must be a mapping (line 1)"
    assert error(with_top("health: [active]")) == "health: must be a mapping (line 1)"


def test_health_env_expansion() -> None:
    config = parse(health_doc("active:\n  interval: ${INTERVAL:-3s}\n  fall: ${FALL}\n"), FALL="4")
    assert (config.health.active.interval, config.health.active.fall) == (3.0, 4)


def test_admin_and_log_sections() -> None:
    config = parse(
        BACKEND + "admin: {listen: '127.0.0.1:9911'}\nlog: {format: json, access: false}\n"
    )
    assert (config.admin.listen_host, config.admin.listen_port, config.admin.enabled) == (
        "127.0.0.1",
        9911,
        True,
    )
    assert (config.log.format, config.log.access, config.log.level) == ("json", False, "info")
    assert parse(BACKEND).admin.listen_port == 9901
    assert error(BACKEND + "admin: {listen: '0.0.0.0:9901'}\n") == (
        "admin.listen: the admin API on 0.0.0.0 (not loopback) needs admin.token: its"
        " drain/undrain calls would be open to the network (line 4)"
    )
    token = "t" * 20
    assert (
        parse(BACKEND + f"admin: {{listen: '0.0.0.0:9901', token: {token}}}\n").admin.token == token
    )
    assert error(BACKEND + "admin: {token: short}\n") == (
        "admin.token: must be a string of at least 16 characters (line 4)"
    )
    assert (
        error(BACKEND + "log: {format: xml}\n") == 'log.format: must be "text" or "json" (line 4)'
    )


# --- backend limits and TLS ---------------------------------------------------


def https_backend(extra: str) -> str:
    """One https backend whose entry gets ``extra`` lines appended (from line 4)."""
    return "backends:\n  - name: a\n    url: https://mcp.example.com\n" + extra


def pem_file(tmp_path: Path, name: str = "ca.pem") -> Path:
    """An existing file (the loader checks only that it exists)."""
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


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


# --- concurrency limits -------------------------------------------------------


def section_doc(section: str, body: str) -> str:
    """BACKEND (lines 1-3) then "``section``:" on line 4 and ``body`` from line 5."""
    return BACKEND + f"{section}:\n" + textwrap.indent(doc(body), "  ")


def test_limits_concurrency_defaults() -> None:
    limits = parse(BACKEND).limits
    assert (limits.max_in_flight, limits.max_streams) == (None, None)
    assert (limits.max_queue, limits.queue_timeout) == (1000, 5.0)
    assert parse(section_doc("limits", "max_in_flight: null\nmax_streams: ~")).limits == (
        LimitsConfig()
    )


def test_limits_concurrency_values() -> None:
    body = "max_in_flight: 100\nmax_streams: 1\nmax_queue: 0\nqueue_timeout: 250ms"
    assert parse(section_doc("limits", body)).limits == LimitsConfig(
        max_in_flight=100, max_streams=1, max_queue=0, queue_timeout=0.25
    )
    assert parse(section_doc("limits", "queue_timeout: 1m30s")).limits.queue_timeout == 90.0
    assert parse(section_doc("limits", "max_queue: 50000")).limits.max_queue == 50000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("max_in_flight: 0", "limits.max_in_flight: must be an integer >= 1 (line 5)"),
        ("max_in_flight: '10'", "limits.max_in_flight: must be an integer >= 1 (line 5)"),
        ("max_in_flight: 1.5", "limits.max_in_flight: must be an integer >= 1 (line 5)"),
        ("max_streams: -1", "limits.max_streams: must be an integer >= 1 (line 5)"),
        ("max_streams: true", "limits.max_streams: must be an integer >= 1 (line 5)"),
        ("max_queue: -1", "limits.max_queue: must be an integer >= 0 (line 5)"),
        ("max_queue: ~", "limits.max_queue: must be an integer >= 0 (line 5)"),
        ("max_queue: 1k", "limits.max_queue: must be an integer >= 0 (line 5)"),
        ("queue_timeout: 0", "limits.queue_timeout: must be greater than 0 (line 5)"),
        ("queue_timeout: 0ms", "limits.queue_timeout: must be greater than 0 (line 5)"),
        (
            "queue_timeout: -1",
            "limits.queue_timeout: invalid duration -1: must not be negative (line 5)",
        ),
        (
            "queue_timeout: soon",
            f'limits.queue_timeout: invalid duration "soon": {DURATION_HINT} (line 5)',
        ),
        (
            "max_inflight: 5",
            'limits.max_inflight: unknown key (did you mean "max_in_flight"?) (line 5)',
        ),
        (
            "zzz: 5",
            "limits.zzz: unknown key (expected one of: max_header_bytes, max_body_bytes,"
            " max_in_flight, max_streams, max_queue, queue_timeout, min_body_rate) (line 5)",
        ),
    ],
)
def test_limits_concurrency_invalid(body: str, message: str) -> None:
    assert error(section_doc("limits", body)) == message


# --- retries ------------------------------------------------------------------

ALL_RETRY_CONDITIONS = frozenset({"connect_failure", "reset", "502", "503", "504"})
RETRY_CONDITION_HINT = "must be one of connect_failure, reset, 502, 503, 504"
RETRY_ON_HINT = "must be a list, e.g. [connect_failure, reset, 502, 503]"


def test_retries_defaults() -> None:
    default = RetriesConfig(2, 20.0, frozenset({"connect_failure", "reset"}), False)
    assert parse(BACKEND).retries == RetriesConfig() == default
    assert parse(with_top("retries:")).retries == default
    assert parse(with_top("retries: {}")).retries == default


def test_retries_full() -> None:
    body = """
        attempts: 10
        budget_percent: 12.5
        "on": [connect_failure, reset, 502, 503, 504]
        non_idempotent: true
        """
    assert parse(section_doc("retries", body)).retries == RetriesConfig(
        10, 12.5, ALL_RETRY_CONDITIONS, True
    )
    body = "attempts: 0\nbudget_percent: 0\nnon_idempotent: false"
    assert parse(section_doc("retries", body)).retries == RetriesConfig(
        attempts=0, budget_percent=0
    )
    assert parse(section_doc("retries", "budget_percent: 100")).retries.budget_percent == 100.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[connect_failure, reset, 502, 503, 504]", ALL_RETRY_CONDITIONS),
        ("[502, '503']", {"502", "503"}),
        ("[reset, reset]", {"reset"}),
        ("reset", {"reset"}),  # a single value without brackets
        ("504", {"504"}),
        ("'503'", {"503"}),
        ("[]", set()),  # never retry
        ("\n  - connect_failure\n  - 503", {"connect_failure", "503"}),
    ],
)
def test_retries_on_valid(value: str, expected: set[str]) -> None:
    # "on" is quoted: YAML 1.1 reads a plain on as the boolean true.
    assert parse(section_doc("retries", f'"on": {value}')).retries.on == frozenset(expected)


def test_retries_on_unquoted_key() -> None:
    assert parse(section_doc("retries", "on: [reset, 502]")).retries.on == {"reset", "502"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('"on": [reset, 5xx]', f"retries.on[1]: {RETRY_CONDITION_HINT} (line 5)"),
        ('"on":\n  - reset\n  - 500', f"retries.on[1]: {RETRY_CONDITION_HINT} (line 7)"),
        ('"on": [true]', f"retries.on[0]: {RETRY_CONDITION_HINT} (line 5)"),
        ('"on": [Reset]', f"retries.on[0]: {RETRY_CONDITION_HINT} (line 5)"),
        ('"on": timeout', f"retries.on[0]: {RETRY_CONDITION_HINT} (line 5)"),
        ('"on": {reset: true}', f"retries.on: {RETRY_ON_HINT} (line 5)"),
        ('"on":', f"retries.on: {RETRY_ON_HINT} (line 5)"),
        ("attempts: 11", "retries.attempts: must be an integer from 0 to 10 (line 5)"),
        ("attempts: -1", "retries.attempts: must be an integer from 0 to 10 (line 5)"),
        ("attempts: 1.5", "retries.attempts: must be an integer from 0 to 10 (line 5)"),
        ("attempts: '2'", "retries.attempts: must be an integer from 0 to 10 (line 5)"),
        ("attempts: true", "retries.attempts: must be an integer from 0 to 10 (line 5)"),
        ("budget_percent: 101", "retries.budget_percent: must be a number from 0 to 100 (line 5)"),
        ("budget_percent: -1", "retries.budget_percent: must be a number from 0 to 100 (line 5)"),
        ("budget_percent: 20%", "retries.budget_percent: must be a number from 0 to 100 (line 5)"),
        ("budget_percent: .nan", "retries.budget_percent: must be a number from 0 to 100 (line 5)"),
        ("budget_percent: true", "retries.budget_percent: must be a number from 0 to 100 (line 5)"),
        (
            "non_idempotent: 'yes'",
            "retries.non_idempotent: must be a boolean (true or false, unquoted) (line 5)",
        ),
        ("attemps: 3", 'retries.attemps: unknown key (did you mean "attempts"?) (line 5)'),
        (
            "zzz: 3",
            "retries.zzz: unknown key (expected one of: attempts, budget_percent, on,"
            " non_idempotent) (line 5)",
        ),
    ],
)
def test_retries_invalid(body: str, message: str) -> None:
    assert "\n".join(errors(section_doc("retries", body))) == message


# --- rate limiting ------------------------------------------------------------

RATE_HINT = 'must be requests per second, or a string such as "600/m" or "5/s"'
RATE_KEY_HINT = 'must be "address" or "header:NAME", e.g. "header:X-Api-Key"'
RATE_LIMIT_REDIS = RedisConfig(prefix="mcplb:ratelimit:")


def test_rate_limit_is_off_unless_configured() -> None:
    assert parse(BACKEND).rate_limit is None
    assert parse(with_top("rate_limit:")).rate_limit is None
    assert parse(with_top("rate_limit: ~")).rate_limit is None


def test_rate_limit_defaults() -> None:
    config = parse(with_top("rate_limit: {rate: 5}"))
    assert config.rate_limit == RateLimitConfig(
        rate=5.0, burst=20, header=None, store="memory", redis=RATE_LIMIT_REDIS
    )
    assert RateLimitConfig().redis == RATE_LIMIT_REDIS


def test_rate_limit_full() -> None:
    body = """
        rate: 600/m
        burst: 1
        key: header:X-Api-Key
        store: redis
        redis:
          url: rediss://:pw@redis.example.com:6380/2
          timeout: 100ms
          prefix: "rl:"
        """
    assert parse(section_doc("rate_limit", body)).rate_limit == RateLimitConfig(
        rate=10.0,
        burst=1,
        header="x-api-key",
        store="redis",
        redis=RedisConfig("rediss://:pw@redis.example.com:6380/2", 0.1, "rl:"),
    )
    rate_limit = parse(section_doc("rate_limit", "rate: 1\nstore: redis")).rate_limit
    assert rate_limit is not None
    assert (rate_limit.store, rate_limit.redis) == ("redis", RATE_LIMIT_REDIS)


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        ("5", 5.0),
        ("0.5", 0.5),
        ("1000000", 1e6),
        ("600/m", 10.0),
        ("'600/m'", 10.0),
        ("5/s", 5.0),
        ("3600/h", 1.0),
        ("90/h", 0.025),
        ("'1.5 / m'", 0.025),
        ("' 2/s '", 2.0),
        (".5/s", 0.5),
        ("'7'", 7.0),
    ],
)
def test_rate_limit_rate_valid(value: str, rate: float) -> None:
    config = parse(section_doc("rate_limit", f"rate: {value}"))
    assert config.rate_limit is not None
    assert config.rate_limit.rate == rate


def test_rate_limit_rate_from_environment() -> None:
    text = section_doc("rate_limit", "rate: ${RATE:-600/m}")
    assert (rate_limit := parse(text).rate_limit) is not None
    assert rate_limit.rate == 10.0
    assert (rate_limit := parse(text, RATE="2").rate_limit) is not None
    assert rate_limit.rate == 2.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be greater than 0"),
        ("-1", "must be greater than 0"),
        ("0.0", "must be greater than 0"),
        ("0/s", "must be greater than 0"),
        ("5/d", RATE_HINT),
        ("5/min", RATE_HINT),
        ("'5 per second'", RATE_HINT),
        ("'/m'", RATE_HINT),
        ("'-1/s'", RATE_HINT),
        ("true", RATE_HINT),
        ("~", RATE_HINT),
        ("[5]", RATE_HINT),
    ],
)
def test_rate_limit_rate_invalid(value: str, message: str) -> None:
    assert error(section_doc("rate_limit", f"rate: {value}")) == (
        f"rate_limit.rate: {message} (line 5)"
    )


def test_rate_limit_huge_integer_rate_is_a_config_error() -> None:
    found = errors(section_doc("rate_limit", "rate: 1" + "0" * 400))
    assert len(found) == 1
    assert found[0].startswith("rate_limit.rate: must be a finite number")


def test_rate_limit_rate_is_required() -> None:
    assert error(with_top("rate_limit: {}")) == 'rate_limit: missing required key "rate" (line 1)'
    assert error(with_top("rate_limit: {burst: 5}")) == (
        'rate_limit: missing required key "rate" (line 1)'
    )


@pytest.mark.parametrize(("value", "burst"), [("1", 1), ("20", 20), ("5000", 5000)])
def test_rate_limit_burst_valid(value: str, burst: int) -> None:
    config = parse(section_doc("rate_limit", f"rate: 1\nburst: {value}"))
    assert config.rate_limit is not None
    assert config.rate_limit.burst == burst


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "'5'", "~", "true"])
def test_rate_limit_burst_invalid(value: str) -> None:
    assert error(section_doc("rate_limit", f"rate: 1\nburst: {value}")) == (
        "rate_limit.burst: must be an integer >= 1 (line 6)"
    )


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ("address", None),
        ("header:X-Api-Key", "x-api-key"),
        ("'header:Authorization'", "authorization"),
        ("header:x_tenant.id", "x_tenant.id"),
    ],
)
def test_rate_limit_key_valid(value: str, header: str | None) -> None:
    config = parse(section_doc("rate_limit", f"rate: 1\nkey: {value}"))
    assert config.rate_limit is not None
    assert config.rate_limit.header == header


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Address", RATE_KEY_HINT),
        ("ip", RATE_KEY_HINT),
        ("X-Api-Key", RATE_KEY_HINT),
        ("5", RATE_KEY_HINT),
        ("~", RATE_KEY_HINT),
        (
            "'header:'",
            'must be a header name (letters, digits and !#$%&\'*+-.^_`|~), e.g. "X-Tenant-Id"',
        ),
        (
            "'header:X Api'",
            'must be a header name (letters, digits and !#$%&\'*+-.^_`|~), e.g. "X-Tenant-Id"',
        ),
    ],
)
def test_rate_limit_key_invalid(value: str, message: str) -> None:
    assert error(section_doc("rate_limit", f"rate: 1\nkey: {value}")) == (
        f"rate_limit.key: {message} (line 6)"
    )


def test_rate_limit_key_cannot_be_the_session_header() -> None:
    found = error(section_doc("rate_limit", "rate: 1\nkey: header:Mcp-Session-Id"))
    assert found.startswith("rate_limit.key: cannot be Mcp-Session-Id")
    assert found.endswith("(line 6)")


def test_rate_limit_store() -> None:
    for store in ("memory", "redis"):
        config = parse(section_doc("rate_limit", f"rate: 1\nstore: {store}"))
        assert config.rate_limit is not None
        assert config.rate_limit.store == store
    assert error(section_doc("rate_limit", "rate: 1\nstore: signed")) == (
        'rate_limit.store: must be "memory" or "redis" (line 6)'
    )


def test_rate_limit_redis_refused_with_memory_store() -> None:
    body = "rate: 1\nredis:\n  url: redis://r:6379/0\n  timeout: 1s\n  prefix: 'lb:'"
    expected = [
        f'rate_limit.redis.{key}: only used when store is "redis" (the store is "memory")'
        f" (line {n})"
        for n, key in enumerate(("url", "timeout", "prefix"), 7)
    ]
    assert errors(section_doc("rate_limit", body)) == expected
    assert errors(section_doc("rate_limit", "store: memory\n" + body)) == [
        message.replace(f"(line {n})", f"(line {n + 1})") for n, message in enumerate(expected, 7)
    ]
    # The sticky store's default prefix is not this one's.
    assert error(section_doc("rate_limit", "rate: 1\nredis: {prefix: 'mcplb:session:'}")) == (
        'rate_limit.redis.prefix: only used when store is "redis" (the store is "memory") (line 6)'
    )
    # The defaults written out (an uncommented example) are not refused.
    body = (
        "rate: 1\nredis:\n  url: redis://127.0.0.1:6379/0\n  timeout: 250ms\n"
        "  prefix: 'mcplb:ratelimit:'"
    )
    assert (rate_limit := parse(section_doc("rate_limit", body)).rate_limit) is not None
    assert rate_limit.redis == RATE_LIMIT_REDIS
    # An invalid store is reported alone, without knock-on redis errors.
    assert error(section_doc("rate_limit", "rate: 1\nstore: file\nredis: {prefix: 'x:'}")) == (
        'rate_limit.store: must be "memory" or "redis" (line 6)'
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("url: http://r:6379", "rate_limit.redis.url: scheme must be redis, rediss or unix"),
        ("timeout: 0", "rate_limit.redis.timeout: must be greater than 0"),
        (
            "prefix: ''",
            'rate_limit.redis.prefix: must be a non-empty string, e.g. "mcplb:session:"',
        ),
        ("prefx: a", 'rate_limit.redis.prefx: unknown key (did you mean "prefix"?)'),
    ],
)
def test_rate_limit_redis_invalid(line: str, message: str) -> None:
    body = f"rate: 1\nstore: redis\nredis:\n  {line}"
    assert error(section_doc("rate_limit", body)) == f"{message} (line 8)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rate: 1\nrat: 2", 'rate_limit.rat: unknown key (did you mean "rate"?) (line 6)'),
        (
            "rate: 1\nzzz: 2",
            "rate_limit.zzz: unknown key (expected one of: rate, burst, key, trusted_proxies,"
            " store, redis) (line 6)",
        ),
    ],
)
def test_rate_limit_unknown_keys(body: str, message: str) -> None:
    assert error(section_doc("rate_limit", body)) == message


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
        "listen_tls.ca: unknown key (expected one of: cert, key) (line 7)"
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
    assert config.rate_limit == RateLimitConfig(rate=10.0, trusted_proxies=("10.0.0.0/8",))
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


# --- warnings: valid settings that are probably mistakes ---------------------------------


@pytest.mark.parametrize(
    ("url", "sent", "meant"),
    [
        ("http://127.0.0.1:9001/mcp", "http://127.0.0.1:9001/mcp/mcp", "http://127.0.0.1:9001"),
        ("http://h:1/api/mcp/", "http://h:1/api/mcp/mcp", "http://h:1/api"),
    ],
)
def test_backend_url_ending_in_mcp_is_a_warning(url: str, sent: str, meant: str) -> None:
    config = parse(f"backends:\n  - name: a\n    url: {url}\n")
    assert [str(w) for w in config.warnings] == [
        f"backends[0].url: ends in /mcp, but a backend URL's path is put before every request "
        f"path: a client's POST /mcp is sent to {sent}. Write {meant} to reach the server's "
        "/mcp (line 3)"
    ]
    assert config.backends[0].path_prefix.endswith("/mcp")  # still accepted as written


def test_warnings_ride_along_with_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("workers: 0\nbackends:\n  - {name: a, url: 'http://h:1/mcp'}\n", environ={})
    assert [issue.path for issue in info.value.issues] == ["workers"]
    assert [issue.path for issue in info.value.warnings] == ["backends[0].url"]
    assert pickle.loads(pickle.dumps(info.value)).warnings == info.value.warnings


def test_backend_urls_without_mcp_have_no_warning() -> None:
    config = parse(
        "backends:\n  - {name: a, url: 'http://h:1/mcpx'}\n  - {name: b, url: 'http://h:2'}\n"
    )
    assert config.warnings == ()


def test_admin_protect_metrics_needs_the_token() -> None:
    assert error(BACKEND + "admin:\n  protect_metrics: true\n") == (
        "admin.protect_metrics: needs admin.token (line 5)"
    )
    token = "t" * 16
    config = parse(BACKEND + f"admin:\n  token: {token}\n  protect_metrics: true\n")
    assert (config.admin.token, config.admin.protect_metrics) == (token, True)
    assert parse(BACKEND).admin.protect_metrics is False
