"""The config document as a whole (proxy/config/): valid documents, file and YAML
errors, unknown keys, durations and sizes, environment variables, YAML features, error
reporting, robustness and warnings."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcplb.proxy.config.checks import parse_duration, parse_size
from mcplb.proxy.config.errors import ConfigError, ConfigIssue
from mcplb.proxy.config.loader import load_config, parse_config
from mcplb.proxy.config.schema import (
    BackendConfig,
    Config,
    HealthConfig,
    LimitsConfig,
    RetriesConfig,
    StickyConfig,
    TimeoutsConfig,
)
from tests.support.config_docs import (
    BACKEND,
    EXAMPLE,
    NO_SESSIONS,
    doc,
    error,
    errors,
    parse,
    with_backend,
    with_top,
)

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
        "same_site", "header", "mcp_tasks", "task_ttl_max",
        "timeouts", "connect", "header", "upstream_header", "mcp_call", "sse_keepalive",
        "idle", "upstream_keepalive",
        "grace", "limits", "max_header_bytes", "max_body_bytes",
        "health", "initial", "panic", "slow_start", "active", "enabled", "type", "path",
        "method", "expect_status", "expect_tools", "interval", "timeout", "rise", "fall",
        "fast_interval", "down_interval", "passive", "consecutive_failures", "on_5xx",
        "ejection_time", "max_ejection_time", "ejection_memory", "max_ejection_percent",
        "max_connections", "max_streams", "ca", "verify", "max_in_flight", "max_queue",
        "queue_timeout", "retries", "attempts", "budget_percent", "on", "non_idempotent",
        "rate_limit", "rate", "burst", "key", "trusted_proxies", "listen_tls", "cert",
        "watch_config", "shutdown_delay", "discovery", "dns", "record", "port", "scheme",
        "resolvers", "keepalive", "max_in_flight_per_client", "request_buffer",
        "max_client_connections", "max_connections_per_client", "allow_networks",
        "max_backends", "auth", "resource", "jwt", "issuer", "jwks_url", "audience",
        "algorithms", "required_scopes", "forward_token", "tools",
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
        "retries, rate_limit, auth, listen_tls, backend_tls, watch_config, discovery, tracing) "
        "(line 1)"
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
            " max_connections, max_streams, ca, verify, client_cert, client_key) (line 4)",
        ),
        (
            with_backend("    1: 2\n"),
            "backends[0].1: unknown key (expected one of: name, url, weight, max_sessions,"
            " max_connections, max_streams, ca, verify, client_cert, client_key) (line 4)",
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


@pytest.mark.parametrize("value", ["[]", "true", "on"])
def test_sections_must_be_mappings(value: str) -> None:
    for section in ("sticky", "timeouts", "limits", "retries", "rate_limit", "listen_tls"):
        assert error(with_top(f"{section}: {value}")) == f"{section}: must be a mapping (line 1)"


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
