"""The admin API against web pages (issue 29, N1): DNS rebinding and cross-site requests.

Without a token the admin API is reachable by anything on the machine, browsers included:
a page may send "simple" cross-site POSTs (``Origin`` of the page, ``text/plain`` or form
bodies) and, once its domain is re-pointed at 127.0.0.1, read answers with its own name
in ``Host``. Raw bytes, as a browser would send them.
"""

from __future__ import annotations

import json

import pytest

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import load_config
from mcplb.proxy.config.schema import AdminConfig
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support import rawhttp
from tests.test_admin import minting_app


@pytest.fixture
async def open_admin(start_proxy: ProxyFactory, serve_app: AppFactory) -> ProxyServer:
    """The default setup: admin API on loopback, no token."""
    backends = [backend_config(n, await serve_app(minting_app(n))) for n in ("a", "b")]
    return await start_proxy(backends, admin=AdminConfig(listen_port=0))


def draining(proxy: ProxyServer) -> set[str]:
    return {b.name for b in proxy.runtime.cluster.backends if b.draining}


async def send(port: int | None, head: str, body: bytes = b"") -> rawhttp.Response:
    assert port is not None
    data = head.replace("\n", "\r\n").encode() + f"Content-Length: {len(body)}\r\n\r\n".encode()
    return await rawhttp.request(port, data + body)


async def test_a_browser_shaped_cross_site_post_is_refused(open_admin: ProxyServer) -> None:
    port = open_admin.admin_port
    # What <form method=post enctype=text/plain action=http://127.0.0.1:9901/...> sends.
    response = await send(
        port,
        f"POST /backends/a/drain?deadline=0s HTTP/1.1\nHost: 127.0.0.1:{port}\n"
        "Origin: http://evil.example\nContent-Type: text/plain\n",
        b"x=y",
    )
    assert response.status == 403, response.body
    assert json.loads(response.body)["error"] == "forbidden"
    # The same page's fetch() with no body at all: Origin is still sent.
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port}.evil.example"):
        response = await send(
            port, f"POST /backends/b/drain HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: {origin}\n"
        )
        assert response.status == 403, (origin, response.body)
    # A same-origin Origin but a form body (a page served by the admin port cannot exist,
    # but the content type alone must be refused too).
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = await send(
            port,
            f"POST /reload HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: {kind}\n",
            b"{}",
        )
        assert response.status == 403, (kind, response.body)
    assert draining(open_admin) == set()


async def test_a_rebinding_shaped_request_is_refused(open_admin: ProxyServer) -> None:
    """A page at evil.example:9901 whose name now resolves to 127.0.0.1: same-origin for
    the browser, so it can read the answers and send any content type; only Host tells."""
    port = open_admin.admin_port
    for path in ("/status", "/metrics", "/readyz"):
        response = await send(port, f"GET {path} HTTP/1.1\nHost: evil.example:{port}\n")
        assert response.status == 421, (path, response.body)
        assert b"backends" not in response.body and b"mcplb_" not in response.body
    response = await send(
        port,
        f"POST /backends/a/drain HTTP/1.1\nHost: evil.example:{port}\n"
        f"Origin: http://evil.example:{port}\nContent-Type: application/json\n",
        b"{}",
    )
    assert response.status == 421
    # Two Host headers are not a way around it.
    response = await send(port, "GET /status HTTP/1.1\nHost: 127.0.0.1\nHost: evil.example\n")
    assert response.status in (400, 421)
    assert draining(open_admin) == set()


async def test_tools_and_same_origin_requests_still_work(open_admin: ProxyServer) -> None:
    port = open_admin.admin_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "LOCALHOST"):
        response = await send(port, f"GET /status HTTP/1.1\nHost: {host}\n")
        assert response.status == 200, (host, response.body)
    # curl -X POST: no Origin, no body.
    response = await send(port, f"POST /backends/a/drain HTTP/1.1\nHost: localhost:{port}\n")
    assert response.status == 200, response.body
    # A JSON body with the admin's own Origin.
    response = await send(
        port,
        f"POST /backends/a/undrain HTTP/1.1\nHost: 127.0.0.1:{port}\n"
        f"Origin: http://127.0.0.1:{port}\nContent-Type: application/json; charset=utf-8\n",
        b"{}",
    )
    assert response.status == 200, response.body
    assert draining(open_admin) == set()


async def test_admin_allowed_hosts_widens_the_names(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    backend = backend_config("a", await serve_app(minting_app("a")))
    proxy = await start_proxy(
        [backend], admin=AdminConfig(listen_port=0, allowed_hosts=("admin.internal",))
    )
    response = await send(proxy.admin_port, "GET /readyz HTTP/1.1\nHost: admin.internal:1\n")
    assert response.status == 200
    response = await send(proxy.admin_port, "GET /readyz HTTP/1.1\nHost: localhost\n")
    assert response.status == 421


def test_admin_allowed_hosts_is_checked_in_the_config(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "c.yaml"
    path.write_text(
        "backends: [{name: a, url: 'http://127.0.0.1:1'}]\nadmin:\n"
        "  allowed_hosts: ['localhost:evil']\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "admin.allowed_hosts" in str(caught.value)
    assert ":3" in str(caught.value) or "line 3" in str(caught.value)
