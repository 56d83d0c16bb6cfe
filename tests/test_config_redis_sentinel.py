"""The Redis sections' Sentinel keys (sticky.redis, rate_limit.redis): sentinels and service
in place of url, password, sentinel_password, tls, ca; errors name the path and the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config, RedisConfig
from mcplb.proxy.config.validate import file_issues

# Lines 1-3: a backend; line 4 "sticky:", line 5 "store: redis", line 6 "redis:", the
# body from line 7.
HEAD = "backends:\n  - name: a\n    url: http://127.0.0.1:9001\nsticky:\n  store: redis\n  redis:\n"
SENTINELS = 'sentinels: ["127.0.0.1:26379", "[::1]:26380", "redis-sentinel-2.example:26379"]\n'


def sticky(body: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(body).lstrip("\n"), "    ")


def parse(text: str) -> Config:
    return parse_config(text, environ={"PW": "server-secret"}, checks=file_issues)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(issue) for issue in info.value.issues]


def test_sentinels_and_service_in_place_of_url() -> None:
    body = SENTINELS + "service: mymaster\npassword: ${PW}\nsentinel_password: other\n"
    redis = parse(sticky(body)).sticky.redis
    assert redis.sentinels == (
        ("127.0.0.1", 26379),
        ("::1", 26380),
        ("redis-sentinel-2.example", 26379),
    )
    assert (redis.service, redis.password, redis.sentinel_password) == (
        "mymaster",
        "server-secret",
        "other",
    )
    assert (redis.tls, redis.ca) == (False, None)
    assert "server-secret" not in repr(redis) and "other" not in repr(redis)  # secrets
    # One address alone is a list of one.
    one = parse(sticky('sentinels: "127.0.0.1:26379"\nservice: m\n')).sticky.redis
    assert one.sentinels == (("127.0.0.1", 26379),)


def test_rate_limit_redis_takes_the_same_keys() -> None:
    text = (
        "backends:\n  - name: a\n    url: http://127.0.0.1:9001\nrate_limit:\n  rate: 5\n"
        "  store: redis\n  redis:\n    " + SENTINELS + "    service: mymaster\n"
    )
    limit = parse(text).rate_limit
    assert limit is not None
    assert limit.redis.service == "mymaster" and len(limit.redis.sentinels) == 3
    assert limit.redis.prefix == "mcplb:ratelimit:"


def test_url_and_sentinels_are_exclusive() -> None:
    body = "url: redis://127.0.0.1:6379/0\n" + SENTINELS + "service: m\n"
    assert errors(sticky(body)) == [
        "sticky.redis.sentinels: cannot be given with url: the sentinels name the master "
        "(remove url, or sentinels for one server) (line 8)"
    ]


def test_sentinels_need_a_service_and_the_service_needs_sentinels() -> None:
    assert errors(sticky(SENTINELS)) == [
        "sticky.redis.sentinels: needs service: the master's name as the sentinels know it "
        "(sentinel monitor NAME ...), e.g. service: mymaster (line 7)"
    ]
    only = "(for one server, write the password and rediss:// for TLS in url: "
    assert errors(sticky("service: m\npassword: x\ntls: true\n")) == [
        f'sticky.redis.service: only used with sentinels {only}"rediss://:PASSWORD@HOST:PORT/0") '
        "(line 7)",
        f'sticky.redis.password: only used with sentinels {only}"rediss://:PASSWORD@HOST:PORT/0") '
        "(line 8)",
        f'sticky.redis.tls: only used with sentinels {only}"rediss://:PASSWORD@HOST:PORT/0") '
        "(line 9)",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'sentinels: ["127.0.0.1"]\nservice: m\n',
            'sticky.redis.sentinels[0]: must be "host:port", e.g. "127.0.0.1:8080" or '
            '"[::1]:8080" (line 7)',
        ),
        (
            'sentinels: ["127.0.0.1:0"]\nservice: m\n',
            "sticky.redis.sentinels[0]: port must be a number between 1 and 65535 (line 7)",
        ),
        (
            'sentinels: ["127.0.0.1:26379", 5]\nservice: m\n',
            'sticky.redis.sentinels[1]: must be "HOST:PORT", e.g. "10.0.0.5:26379" (line 7)',
        ),
        (
            "sentinels: []\nservice: m\n",
            "sticky.redis.sentinels: must not be empty (line 7)",
        ),
        (
            SENTINELS + "service: 'my master'\n",
            "sticky.redis.service: must be the master's name as the sentinels know it, e.g. "
            '"mymaster" (letters, digits, . _ -) (line 8)',
        ),
        (
            SENTINELS + "service: m\npassword: ''\n",
            'sticky.redis.password: must be a non-empty string, e.g. "${REDIS_PASSWORD}" (line 9)',
        ),
        (
            SENTINELS + "service: m\nca: /etc/ca.pem\n",
            "sticky.redis.ca: only used with tls: true (line 9)",
        ),
    ],
)
def test_bad_sentinel_settings_name_path_and_line(body: str, message: str) -> None:
    found = errors(sticky(body))
    assert message in found, found


def test_the_redis_ca_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    body = SENTINELS + f"service: m\ntls: true\nca: '{missing}'\n"
    assert errors(sticky(body)) == [f"sticky.redis.ca: no such file: {missing} (line 10)"]
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    body = SENTINELS + f"service: m\ntls: true\nca: '{ca}'\n"
    assert parse(sticky(body)).sticky.redis.ca == str(ca)


def test_sentinel_keys_with_another_store_are_refused() -> None:
    text = HEAD.replace("store: redis", "store: memory") + "    " + SENTINELS + "    service: m\n"
    found = errors(text)
    assert (
        'sticky.redis.sentinels: only used when store is "redis" (the store is "memory") '
        in (found[0])
    )


def test_the_defaults_are_one_local_server() -> None:
    assert RedisConfig().sentinels == () and RedisConfig().service is None
