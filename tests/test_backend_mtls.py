"""TLS toward backends and client certificates: one TLS context per https backend, shared by
the relay's pool and the health probes; client certificates to backends that require them
(mTLS), per backend or for all, re-read on reload; client-certificate verification on the
listener (``listen_tls.client_ca``). Real TLS servers on 127.0.0.1, certificates made by
trustme: valid, expired, and issued by a CA the other side does not trust."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from mcplb.healthcheck.probes import http_probe
from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.schema import ActiveHealthConfig, BackendConfig, Config

LOOPBACK = "127.0.0.1"
STEP = 5.0  # seconds any one network step may take


# --- certificates ---------------------------------------------------------------------------


@dataclass
class Issuer:
    """A CA (its PEM file written) that issues server and client certificates."""

    ca: trustme.CA
    ca_path: Path
    directory: Path

    def server(self, *, client_ca: Path | None = None) -> ssl.SSLContext:
        """A server context for 127.0.0.1; with ``client_ca``, client certificates it
        issued are required."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(client_ca))
        return context

    def client_files(self, name: str, *, expired: bool = False) -> tuple[Path, Path]:
        """A client certificate (expired a day ago if asked) and its key, as PEM files."""
        now = datetime.datetime.now(datetime.UTC)
        window = {"not_before": now - datetime.timedelta(days=30)}
        if expired:
            window["not_after"] = now - datetime.timedelta(days=1)
        leaf = self.ca.issue_cert(f"{name}.client.test", **window)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


def issuer(directory: Path, name: str) -> Issuer:
    ca = trustme.CA(organization_name=f"mcplb mtls test {name}")
    ca_path = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return Issuer(ca, ca_path, directory)


@pytest.fixture
def good(tmp_path: Path) -> Issuer:
    return issuer(tmp_path, "good")


@pytest.fixture
def rogue(tmp_path: Path) -> Issuer:
    """A CA nobody here trusts."""
    return issuer(tmp_path, "rogue")


ServeApp = Callable[[ssl.SSLContext], Awaitable[int]]


@pytest.fixture
async def serve_tls_app() -> AsyncIterator[ServeApp]:
    """An aiohttp app over TLS on loopback, answering /echo with its peer's certificate."""
    runners: list[web.AppRunner] = []

    async def echo(request: web.Request) -> web.Response:
        transport = request.transport
        peer = None if transport is None else transport.get_extra_info("peercert")
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        return web.json_response({"client": subject.get("commonName")})

    async def factory(context: ssl.SSLContext) -> int:
        app = web.Application()
        app.router.add_get("/echo", echo)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, LOOPBACK, 0, ssl_context=context).start()
        port: int = runner.addresses[-1][1]
        return port

    yield factory
    for runner in runners:
        await runner.cleanup()


def https_backend(name: str, port: int, ca: Path, **tls: str) -> BackendConfig:
    url = f"https://{LOOPBACK}:{port}"
    return BackendConfig(name, url, "https", LOOPBACK, port, ca=str(ca), **tls)


# --- one context per backend ----------------------------------------------------------------


async def test_the_pool_and_the_probes_share_one_context_per_backend(
    serve_tls_app: ServeApp, good: Issuer
) -> None:
    """Issue 23: the relay's pool and the health probes connected with two contexts built
    from the same settings. Now both handshake through the backend's one context."""
    port = await serve_tls_app(good.server())
    cluster = Cluster(Config(backends=(https_backend("b", port, good.ca_path),)), probing=False)
    (backend,) = cluster.backends
    context = backend.tls_context()
    assert context is not None

    conn = await cluster.pool(backend).connect()
    assert conn.transport is not None
    conn.transport.close()
    probe = ActiveHealthConfig(enabled=True, path="/echo", timeout=STEP)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        assert await http_probe(session, backend, probe) == (True, "HTTP 200")

    assert context.session_stats()["connect_good"] == 2  # the pool's and the probe's
    assert backend.tls_context() is context
    cluster.close_pools()
