"""TLS: the listener's context and its live reload, https backends (relay and health probes),
and an MCP SDK client over TLS. Real sockets on 127.0.0.1, certificates from trustme."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import httpx2
import pytest
import trustme
from aiohttp import web
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcplb.healthcheck.monitor import HealthMonitor
from mcplb.healthcheck.probes import http_probe, mcp_probe
from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    BackendConfig,
    HealthConfig,
    HealthInitial,
    ListenTlsConfig,
)
from mcplb.proxy.config.tls import TlsError, backend_context, reload_server_context, server_context
from tests.conftest import ProxyFactory, backend_config
from tests.support.eventually import eventually
from tests.support.peers import McpBackend, result_text, start_mcp_backend_sync

LOOPBACK = "127.0.0.1"
STEP = 5.0  # seconds any one network step may take
HOSTS = (LOOPBACK, "localhost")


# --- certificates ------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, its PEM file, and a server certificate for 127.0.0.1 / localhost it issued."""

    ca: trustme.CA
    ca_path: Path
    leaf: trustme.LeafCert
    der: bytes  # the server certificate, as a client sees it

    def listen(self, directory: Path, name: str = "server") -> ListenTlsConfig:
        """Write the server certificate and key to ``directory``; their ListenTlsConfig."""
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        self.leaf.cert_chain_pems[0].write_to_path(str(cert))
        self.leaf.private_key_pem.write_to_path(str(key))
        return ListenTlsConfig(str(cert), str(key))

    def client(self) -> ssl.SSLContext:
        """A client context that trusts only this CA and offers h2 and http/1.1."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context

    def server(self) -> ssl.SSLContext:
        """A plain server context with this certificate (for https backends)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.leaf.configure_cert(context)
        return context


def make_pki(directory: Path, name: str, *hosts: str) -> Pki:
    ca = trustme.CA(organization_name=f"mcplb test {name}")
    ca_path = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf = ca.issue_cert(*(hosts or HOSTS))
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return Pki(ca, ca_path, leaf, der)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


@pytest.fixture(scope="module")
def pki(pki_dir: Path) -> Pki:
    return make_pki(pki_dir, "one")


@pytest.fixture(scope="module")
def other_pki(pki_dir: Path) -> Pki:
    """A second, unrelated CA and its server certificate."""
    return make_pki(pki_dir, "two")


def https_backend(name: str, port: int, *, ca: Path | None = None, verify: bool = True) -> Backend:
    return Backend(https_config(name, port, ca=ca, verify=verify))


def https_config(
    name: str, port: int, *, ca: Path | None = None, verify: bool = True
) -> BackendConfig:
    return BackendConfig(
        name,
        f"https://{LOOPBACK}:{port}",
        "https",
        LOOPBACK,
        port,
        ca=None if ca is None else str(ca),
        verify=verify,
    )


# --- raw TLS servers and clients ---------------------------------------------------------


ServeTls = Callable[[ssl.SSLContext], Awaitable[int]]


@pytest.fixture
async def serve_tls() -> AsyncIterator[ServeTls]:
    """TLS echo servers on loopback; returns each one's port."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def factory(context: ssl.SSLContext) -> int:
        server = await asyncio.start_server(echo, LOOPBACK, 0, ssl=context)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield factory
    for server in servers:
        server.close()
    for writer in writers:
        writer.close()


@dataclass
class TlsClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def peer_der(self) -> bytes:
        der: bytes = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der

    @property
    def alpn(self) -> str | None:
        alpn: str | None = self.writer.get_extra_info("ssl_object").selected_alpn_protocol()
        return alpn

    @property
    def version(self) -> str | None:
        version: str | None = self.writer.get_extra_info("ssl_object").version()
        return version

    async def echo(self, data: bytes) -> bytes:
        async with asyncio.timeout(STEP):
            self.writer.write(data)
            return await self.reader.readexactly(len(data))

    def close(self) -> None:
        self.writer.close()


async def tls_connect(
    port: int, context: ssl.SSLContext, server_hostname: str = LOOPBACK
) -> TlsClient:
    async with asyncio.timeout(STEP):
        reader, writer = await asyncio.open_connection(
            LOOPBACK, port, ssl=context, server_hostname=server_hostname
        )
    return TlsClient(reader, writer)


async def handshake(port: int, context: ssl.SSLContext, server_hostname: str = LOOPBACK) -> bytes:
    """Connect, complete a handshake and an echo; the server certificate (DER) it presented."""
    client = await tls_connect(port, context, server_hostname)
    try:
        assert await client.echo(b"ping") == b"ping"
        return client.peer_der
    finally:
        client.close()


# --- server_context ------------------------------------------------------------------------


async def test_server_context_serves_the_cert_with_alpn_http11(
    serve_tls: ServeTls, pki: Pki, tmp_path: Path
) -> None:
    context = server_context(pki.listen(tmp_path))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    port = await serve_tls(context)

    client = await tls_connect(port, pki.client())
    try:
        assert client.peer_der == pki.der
        assert client.alpn == "http/1.1"  # the client offered h2 first; never negotiated
        assert client.version in ("TLSv1.2", "TLSv1.3")
        assert await client.echo(b"hello") == b"hello"
    finally:
        client.close()

    tls12_only = pki.client()
    tls12_only.maximum_version = ssl.TLSVersion.TLSv1_2
    client = await tls_connect(port, tls12_only, server_hostname="localhost")
    try:
        assert client.version == "TLSv1.2" and client.peer_der == pki.der
    finally:
        client.close()


def test_server_context_wrong_key_names_the_key_file(
    pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    good = pki.listen(tmp_path, "a")
    foreign_key = other_pki.listen(tmp_path, "b").key
    with pytest.raises(TlsError) as caught:
        server_context(ListenTlsConfig(good.cert, foreign_key))
    message = str(caught.value)
    assert foreign_key in message and "does not match the certificate" in message
    assert good.cert in message


GARBAGE = "this is not PEM\n"
BROKEN_CERT = "-----BEGIN CERTIFICATE-----\nAAAA!!!!\n-----END CERTIFICATE-----\n"
BROKEN_KEY = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("which", "content", "reason"),
    [
        ("cert", GARBAGE, "no PEM certificate"),
        ("cert", BROKEN_CERT, "not a valid PEM certificate"),
        ("cert", None, "cannot read it"),
        ("key", GARBAGE, "no PEM private key"),
        ("key", BROKEN_KEY, "not a valid PEM private key"),
        ("key", None, "cannot read it"),
    ],
)
def test_server_context_bad_file_names_it(
    pki: Pki, tmp_path: Path, which: str, content: str | None, reason: str
) -> None:
    config = pki.listen(tmp_path)
    bad = Path(config.cert if which == "cert" else config.key)
    if content is None:
        bad.unlink()
    else:
        bad.write_text(content)
    with pytest.raises(TlsError) as caught:
        server_context(config)
    message = str(caught.value)
    assert f"listen_tls.{which} {bad}" in message and reason in message


def test_server_context_refuses_an_encrypted_key_without_prompting(
    pki: Pki, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    config = pki.listen(tmp_path)
    key = serialization.load_pem_private_key(pki.leaf.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    Path(config.key).write_bytes(encrypted)
    with pytest.raises(TlsError, match="encrypted"):
        server_context(config)


# --- reload_server_context -------------------------------------------------------------------


async def test_reload_swaps_the_cert_for_new_handshakes_only(
    serve_tls: ServeTls, pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    config = pki.listen(tmp_path)
    context = server_context(config)
    port = await serve_tls(context)
    before = await tls_connect(port, pki.client())
    assert before.peer_der == pki.der

    other_pki.listen(tmp_path)  # renewal: new files at the same paths
    reload_server_context(context, config)

    assert await handshake(port, other_pki.client()) == other_pki.der
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(port, pki.client())
    try:  # the connection made before the reload keeps its certificate and keeps working
        assert await before.echo(b"still here") == b"still here"
        assert before.peer_der == pki.der
    finally:
        before.close()


@pytest.mark.parametrize("damage", ["garbage cert", "foreign key", "missing key"])
async def test_bad_reload_raises_and_keeps_the_old_cert(
    serve_tls: ServeTls, pki: Pki, other_pki: Pki, tmp_path: Path, damage: str
) -> None:
    config = pki.listen(tmp_path)
    context = server_context(config)
    port = await serve_tls(context)
    if damage == "garbage cert":
        Path(config.cert).write_text(GARBAGE)
    elif damage == "foreign key":
        other_pki.leaf.private_key_pem.write_to_path(config.key)
    else:
        Path(config.key).unlink()

    with pytest.raises(TlsError) as caught:
        reload_server_context(context, config)
    assert config.cert in str(caught.value) or config.key in str(caught.value)
    assert await handshake(port, pki.client()) == pki.der


# --- backend_context -----------------------------------------------------------------------


def test_backend_context_is_none_for_http() -> None:
    assert backend_context(backend_config("plain", 8080)) is None


async def test_backend_context_verifies_against_its_ca(
    serve_tls: ServeTls, pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    server = pki.server()
    server.set_alpn_protocols(["h2", "http/1.1"])
    port = await serve_tls(server)

    trusted = backend_context(https_config("trusted", port, ca=pki.ca_path))
    assert trusted is not None
    client = await tls_connect(port, trusted)
    try:
        assert client.peer_der == pki.der and client.alpn == "http/1.1"
    finally:
        client.close()

    wrong_ca = backend_context(https_config("wrong-ca", port, ca=other_pki.ca_path))
    assert wrong_ca is not None
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await handshake(port, wrong_ca)

    system_cas = backend_context(https_config("system-cas", port))
    assert system_cas is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(port, system_cas)

    # The right CA, but a certificate for another name: the host name is checked too.
    elsewhere = await serve_tls(make_pki(tmp_path, "elsewhere", "other.example").server())
    named = backend_context(https_config("named", elsewhere, ca=tmp_path / "elsewhere-ca.pem"))
    assert named is not None
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        await handshake(elsewhere, named)


async def test_backend_context_verify_false_connects_and_warns_once(
    serve_tls: ServeTls, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mcplb")
    port = await serve_tls(pki.server())
    config = https_config("insecure-unit", port, verify=False)
    context = backend_context(config)
    backend_context(config)  # e.g. the relay's pool and the health probes
    assert context is not None
    assert await handshake(port, context) == pki.der  # an untrusted certificate is accepted

    warnings = [r for r in caplog.records if r.name == "mcplb" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "TLS verification is OFF for backend insecure-unit" in message
    assert "anyone on the path can impersonate it" in message


def test_backend_context_bad_ca_file_names_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(GARBAGE)
    with pytest.raises(TlsError, match=f"backend bad-ca: ca {ca}: not a valid PEM CA bundle"):
        backend_context(https_config("bad-ca", 443, ca=ca))


# --- end to end: the listener --------------------------------------------------------------


def echo_app(name: str) -> web.Application:
    async def echo(req: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in req.headers.items()}
        return web.json_response({"name": name, "headers": headers})

    app = web.Application()
    app.router.add_get("/echo", echo)
    return app


ServeApp = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve_app_tls() -> AsyncIterator[ServeApp]:
    """Run aiohttp applications on loopback, over TLS when given a context; their ports."""
    runners: list[web.AppRunner] = []

    async def factory(app: web.Application, context: ssl.SSLContext | None = None) -> int:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=context)
        await site.start()
        port: int = runner.addresses[-1][1]
        return port

    yield factory
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP)) as session:
        yield session


async def test_tls_listener_relays_and_sets_forwarded_proto(
    start_proxy: ProxyFactory,
    serve_app_tls: ServeApp,
    http: aiohttp.ClientSession,
    pki: Pki,
    tmp_path: Path,
) -> None:
    backend_port = await serve_app_tls(echo_app("plain"))
    proxy = await start_proxy(
        [backend_config("plain", backend_port)], listen_tls=pki.listen(tmp_path)
    )
    url = f"https://{LOOPBACK}:{proxy.port}/echo"
    for _ in range(2):  # the second request reuses the TLS connection
        async with http.get(url, ssl=pki.client()) as response:
            assert response.status == 200
            seen = await response.json()
        assert seen["name"] == "plain"
        assert seen["headers"]["x-forwarded-proto"] == "https"

    # A client that does not trust the CA is refused by its own verification.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await http.get(url)


async def test_plain_http_to_the_tls_port_is_closed_cleanly(
    start_proxy: ProxyFactory,
    serve_app_tls: ServeApp,
    http: aiohttp.ClientSession,
    pki: Pki,
    tmp_path: Path,
) -> None:
    backend_port = await serve_app_tls(echo_app("plain"))
    proxy = await start_proxy(
        [backend_config("plain", backend_port)], listen_tls=pki.listen(tmp_path)
    )
    async with asyncio.timeout(STEP):  # no hang: the proxy closes the connection
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
        try:
            writer.write(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                answer = await reader.read()  # until EOF
            except ConnectionResetError:
                answer = b""
        finally:
            writer.close()
    assert not answer.startswith(b"HTTP/")  # nothing is served in clear text
    assert len(answer) < 64  # at most a TLS alert record

    async with http.get(f"https://{LOOPBACK}:{proxy.port}/echo", ssl=pki.client()) as response:
        assert response.status == 200  # and the proxy goes on serving TLS clients


# --- end to end: https backends ------------------------------------------------------------


async def test_https_backend_verified_with_its_ca(
    start_proxy: ProxyFactory, serve_app_tls: ServeApp, http: aiohttp.ClientSession, pki: Pki
) -> None:
    port = await serve_app_tls(echo_app("secure"), pki.server())
    proxy = await start_proxy([https_config("secure", port, ca=pki.ca_path)])
    for _ in range(2):  # the second request may reuse the pooled TLS connection
        async with http.get(f"http://{LOOPBACK}:{proxy.port}/echo") as response:
            assert response.status == 200
            seen = await response.json()
        assert seen["name"] == "secure"
        assert seen["headers"]["host"] == f"{LOOPBACK}:{port}"


async def test_https_backend_untrusted_by_system_cas_is_502(
    start_proxy: ProxyFactory, serve_app_tls: ServeApp, http: aiohttp.ClientSession, pki: Pki
) -> None:
    port = await serve_app_tls(echo_app("untrusted"), pki.server())
    proxy = await start_proxy([https_config("untrusted", port)])  # no ca: the system CAs
    for _ in range(3):  # each request is answered, on the same client connection
        async with http.get(f"http://{LOOPBACK}:{proxy.port}/echo") as response:
            assert response.status == 502
            await response.read()


async def test_https_backend_verify_false_relays_and_warns(
    start_proxy: ProxyFactory,
    serve_app_tls: ServeApp,
    http: aiohttp.ClientSession,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "mcplb")
    port = await serve_app_tls(echo_app("insecure"), pki.server())
    proxy = await start_proxy([https_config("insecure-e2e", port, verify=False)])
    async with http.get(f"http://{LOOPBACK}:{proxy.port}/echo") as response:
        assert response.status == 200
        assert (await response.json())["name"] == "insecure"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "mcplb" and "TLS verification is OFF" in r.getMessage()
    ]
    assert len(warnings) == 1 and "backend insecure-e2e" in warnings[0]


# --- health probes of https backends -------------------------------------------------------


async def test_probes_use_the_backend_tls_settings(
    serve_app_tls: ServeApp, pki: Pki, other_pki: Pki
) -> None:
    port = await serve_app_tls(echo_app("probed"), pki.server())
    http_cfg = ActiveHealthConfig(enabled=True, type="http", path="/echo", timeout=STEP)
    mcp_cfg = ActiveHealthConfig(enabled=True, type="mcp", path="/echo", timeout=STEP)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        right = https_backend("right", port, ca=pki.ca_path)
        assert await http_probe(session, right, http_cfg) == (True, "HTTP 200")
        # The MCP probe gets through TLS to the HTTP answer (this app is not an MCP server).
        ok, detail = await mcp_probe(session, right, mcp_cfg)
        assert not ok and detail.startswith("initialize: HTTP 405")

        insecure = https_backend("insecure-probe", port, verify=False)
        assert await http_probe(session, insecure, http_cfg) == (True, "HTTP 200")

        for wrong in (
            https_backend("wrong", port, ca=other_pki.ca_path),
            https_backend("system", port),
        ):
            for probe, cfg in ((http_probe, http_cfg), (mcp_probe, mcp_cfg)):
                ok, detail = await probe(session, wrong, cfg)
                assert not ok
                assert detail.startswith("TLS error") and "certificate verify failed" in detail


@pytest.mark.parametrize("initial", ["unhealthy", "healthy"])
async def test_monitor_https_backend_health_follows_verification(
    serve_app_tls: ServeApp, pki: Pki, other_pki: Pki, initial: HealthInitial
) -> None:
    port = await serve_app_tls(echo_app("monitored"), pki.server())
    good = https_backend("good", port, ca=pki.ca_path)
    bad = https_backend("bad", port, ca=other_pki.ca_path)
    active = ActiveHealthConfig(
        enabled=True, type="http", path="/echo", interval=0.2, timeout=0.15, rise=1, fall=1
    )
    monitor = HealthMonitor(HealthConfig(initial=initial, active=active), [good, bad])
    await monitor.start()
    try:
        # Both start "unknown" (treated as ``initial``) until their first verdict.
        await eventually(
            lambda: (
                [monitor.status()[name]["state"] for name in ("good", "bad")]
                == ["healthy", "unhealthy"]
            ),
            within=STEP,
        )
        assert good.available and not bad.available
        status = monitor.status()
        assert status["good"]["last_probe"] == "HTTP 200"
        assert "certificate verify failed" in status["bad"]["last_probe"]
    finally:
        await monitor.stop()


# --- end to end: an MCP SDK client over TLS ------------------------------------------------


@pytest.fixture(scope="module")
def mcp_backend() -> Iterator[McpBackend]:
    backend = start_mcp_backend_sync("tls-mcp")
    yield backend
    backend.stop_sync()


async def test_mcp_sdk_client_over_tls(
    start_proxy: ProxyFactory, mcp_backend: McpBackend, pki: Pki, tmp_path: Path
) -> None:
    proxy = await start_proxy(
        [backend_config("mcp", mcp_backend.port)], listen_tls=pki.listen(tmp_path)
    )
    url = f"https://{LOOPBACK}:{proxy.port}/mcp"
    with anyio.fail_after(15):
        async with (
            httpx2.AsyncClient(verify=pki.client(), timeout=STEP) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write, read_timeout_seconds=STEP) as session,
        ):
            await session.initialize()
            assert result_text(await session.call_tool("whoami", {})) == "tls-mcp"
            assert result_text(await session.call_tool("add", {"a": 2, "b": 3})) == "5"


async def test_config_reload_serves_a_renewed_certificate(
    start_proxy: ProxyFactory,
    serve_app_tls: ServeApp,
    http: aiohttp.ClientSession,
    pki: Pki,
    other_pki: Pki,
    tmp_path: Path,
) -> None:
    """A reload (SIGHUP, POST /reload) picks up renewed certificate files; a broken renewal
    is refused and the running certificate keeps serving."""
    backend_port = await serve_app_tls(echo_app("plain"))
    tls = pki.listen(tmp_path)
    source = tmp_path / "mcplb.yaml"
    source.write_text(
        "listen: 127.0.0.1:0\n"
        f"backends:\n  - {{name: plain, url: 'http://{LOOPBACK}:{backend_port}'}}\n"
        f"listen_tls: {{cert: '{tls.cert}', key: '{tls.key}'}}\n"
    )
    proxy = await start_proxy(
        [backend_config("plain", backend_port)], listen_tls=tls, source=str(source)
    )
    url = f"https://{LOOPBACK}:{proxy.port}/echo"

    other_pki.listen(tmp_path)  # renewed files at the same paths
    result = await proxy.reload()
    assert result.ok, result.messages
    async with http.get(url, ssl=other_pki.client()) as response:
        assert response.status == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await http.get(url, ssl=pki.client())

    Path(tls.cert).write_text("not a certificate\n")
    result = await proxy.reload()
    assert not result.ok
    assert "listen_tls" in result.messages[0]
    async with http.get(url, ssl=other_pki.client()) as response:
        assert response.status == 200
