"""One packet holding a request answered at once and a second request (issue 29, N6).

The proxy answers the first (421 for a Host it does not serve, 429, 503) and closes while
the parser still holds the second: it must neither log a traceback nor answer anything but
the first. Raw bytes, as the audit sent them.
"""

from __future__ import annotations

import logging

import pytest

from mcplb.proxy.config.schema import RateLimitConfig
from tests.conftest import ProxyFactory
from tests.support.rawhttp import RawClient
from tests.test_hostile_input import RawServe, recording_proxy, still_serves

AUDIT_BYTES = (
    b"GET /a HTTP/1.1\r\nHost: evil.example\r\n\r\nGET /b HTTP/1.1\r\nHost: localhost\r\n\r\n"
)


async def one_packet(port: int, data: bytes) -> bytes:
    client = await RawClient.connect(port)
    await client.send(data)
    answer = await client.read_until_closed(timeout=5)
    await client.close()
    return answer


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_audits_bytes_get_one_421_and_no_traceback(
    start_proxy: ProxyFactory, serve_raw: RawServe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, allowed_hosts=None)
    answer = await one_packet(proxy.port, AUDIT_BYTES)
    assert answer.startswith(b"HTTP/1.1 421 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert errors(caplog) == []
    assert recorder.targets == []  # /b was behind a refused request on a closed connection
    resp = await RawClient.connect(proxy.port)
    await resp.send(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await resp.response()).status == 200
    await resp.close()


async def test_a_rate_limited_request_with_another_behind_it(
    start_proxy: ProxyFactory, serve_raw: RawServe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy, recorder = await recording_proxy(
        start_proxy, serve_raw, rate_limit=RateLimitConfig(rate=0.001, burst=1)
    )
    await still_serves(proxy, recorder)  # the one token
    data = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n" * 3
    answer = await one_packet(proxy.port, data)
    assert answer.startswith(b"HTTP/1.1 429 "), answer
    assert errors(caplog) == []
    assert b"/a" not in recorder.targets and b"/b" not in recorder.targets
