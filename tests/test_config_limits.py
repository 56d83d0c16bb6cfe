"""timeouts, limits, concurrency limits, retries and rate_limit (proxy/config/)."""

from __future__ import annotations

import pytest

from mcplb.proxy.config.schema import (
    LimitsConfig,
    RateLimitConfig,
    RedisConfig,
    RetriesConfig,
)
from tests.support.config_docs import (
    BACKEND,
    DURATION_HINT,
    RATE_HINT,
    RATE_KEY_HINT,
    RETRY_CONDITION_HINT,
    error,
    errors,
    parse,
    section_doc,
    with_top,
)

SIZE_HINT = (
    "expected bytes, optionally with a unit: B, KB/MB/GB (powers of 1000) "
    'or KiB/MiB/GiB (powers of 1024), e.g. "64KiB"'
)


TIMEOUT_KEYS = [
    "connect",
    "header",
    "upstream_header",
    "mcp_call",
    "idle",
    "keepalive",
    "upstream_keepalive",
    "grace",
]


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
            " max_in_flight, max_streams, max_in_flight_per_client, max_queue,"
            " queue_timeout, min_body_rate, request_buffer, max_client_connections,"
            " max_connections_per_client) (line 5)",
        ),
    ],
)
def test_limits_concurrency_invalid(body: str, message: str) -> None:
    assert error(section_doc("limits", body)) == message


# --- retries ------------------------------------------------------------------

ALL_RETRY_CONDITIONS = frozenset({"connect_failure", "reset", "502", "503", "504"})
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
            " store, tools, redis) (line 6)",
        ),
    ],
)
def test_rate_limit_unknown_keys(body: str, message: str) -> None:
    assert error(section_doc("rate_limit", body)) == message
