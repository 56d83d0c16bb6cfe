"""The text access log cannot be forged by a client (issue 29, N8): fields are escaped as
nginx's ``escape=default`` does, and a client's X-Request-Id is used only when it is short
and of safe bytes (else the proxy's own replaces it, in the log and toward the backend)."""

from __future__ import annotations

import logging
import re

import pytest

from mcplb.proxy.observability.access_log import AccessLog, escape
from mcplb.proxy.relay import framing
from tests.conftest import ProxyFactory
from tests.support.rawhttp import request
from tests.test_hostile_input import RawServe, recording_proxy

# How log parsers read the combined format: one quoted request line, then the rest.
COMBINED = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
    r"(?P<bytes>\d+) backend=(?P<backend>\S+) duration=\S+ session=\S+ "
    r"request_id=(?P<request_id>\S+)(?P<rest>.*)$"
)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mcplb.access"]


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("/plain?q=1", "/plain?q=1"),
        ('/a"b', "/a\\x22b"),
        ("/a\\b", "/a\\x5Cb"),
        ("/\x1b[31mred", "/\\x1B[31mred"),
        ("/\x9b2J", "/\\x9B2J"),
        ("/caf\xc3\xa9", "/caf\\xC3\\xA9"),  # UTF-8 bytes read as latin-1: each escaped
        ("x\u2028y", "x\\xE2\\x80\\xA8y"),
        ("a\nb\rc\x7f", "a\\x0Ab\\x0Dc\\x7F"),
        ("with space", "with space"),  # as nginx: the request line has spaces
    ],
)
def test_escape_is_nginx_escape_default(text: str, escaped: str) -> None:
    assert escape(text) == escaped


def test_a_forged_line_stays_one_parseable_line() -> None:
    out: list[str] = []
    log = AccessLog(False, out.append)
    target = '/x" 200 1 "-" "ua"\n127.0.0.9 - - [01/Jan/2026:00:00:00 +0000] "GET /admin'
    log.request("127.0.0.1", "GET", target, "1.1", 404, "a", 0.1, 0, 9, "-", "r1", False)
    (line,) = out
    assert "\n" not in line
    found = COMBINED.match(line)
    assert found is not None, line
    assert found["status"] == "404" and found["request_id"] == "r1" and found["rest"] == ""


@pytest.mark.parametrize(
    ("value", "usable"),
    [
        (b"3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b", True),
        (b"01HZX5Q7W8Y9ZABCDEF0123456", True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"x status=200 backend=b9 client_left=0", False),
        (b'x"y', False),
        (b"", False),
        (b"\x9b", False),
    ],
)
def test_usable_request_ids(value: bytes, usable: bool) -> None:
    assert framing.usable_request_id(value) is usable


async def test_through_the_proxy(
    start_proxy: ProxyFactory, serve_raw: RawServe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcplb.access")
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    forged = b"x status=200 backend=b9 client_left=0"
    cases = [
        b"GET /q?a=%22 HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + forged + b"\r\n\r\n",
        b"GET /q HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + b"r" * 5000 + b"\r\n\r\n",
        b"GET /q HTTP/1.1\r\nHost: x\r\nX-Request-Id: good-id-1\r\n\r\n",
        b'GET /q"x HTTP/1.1\r\nHost: x\r\n\r\n',
        b"GET /q HTTP/1.1\r\nHost: x\r\nX-Request-Id: \x9b2J\r\n\r\n",
    ]
    for raw in cases:
        response = await request(proxy.port, raw)
        assert response.status == 200, raw
    logged = lines(caplog)
    assert len(logged) == len(cases)
    ids = []
    for line in logged:
        found = COMBINED.match(line)
        assert found is not None, line
        assert found["rest"] in ("", " client_left=1"), line  # no forged field
        assert found["backend"] in ("a", "-")
        ids.append(found["request_id"])
    assert ids[2] == "good-id-1"
    own = [*ids[:2], ids[4]]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in own), own
    # The backend got the proxy's own id, once, never the client's.
    sent = [seen.values(b"x-request-id") for seen in recorder.requests[:3]]
    assert sent[0] == [own[0].encode()] and sent[1] == [own[1].encode()]
    assert sent[2] == [b"good-id-1"]
