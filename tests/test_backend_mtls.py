"""TLS toward backends and client certificates: one TLS context per https backend, shared by
the relay's pool and the health probes; client certificates to backends that require them
(mTLS), per backend or for all, re-read on reload; client-certificate verification on the
listener (``listen_tls.client_ca``). Real TLS servers on 127.0.0.1, certificates made by
trustme: valid, expired, and issued by a CA the other side does not trust."""

from __future__ import annotations

import dataclasses
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
from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import load_config, parse_config
from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    BackendConfig,
    BackendTlsConfig,
    Config,
    ListenTlsConfig,
)
from mcplb.proxy.config.tls import reload_server_context, server_context
from mcplb.proxy.config.validate import machine_issues
from tests.conftest import ProxyFactory
from tests.support.eventually import eventually

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

    def server_files(self, name: str) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 and its key, as PEM files."""
        leaf = self.ca.issue_cert(LOOPBACK, "localhost")
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def client_files(self, name: str, *, expired: bool = False) -> tuple[Path, Path]:
        """A client certificate (expired a day ago if asked) and its key, as PEM files."""
        now = datetime.datetime.now(datetime.UTC)
        window = {"not_before": now - datetime.timedelta(days=30)}
        if expired:
            window["not_after"] = now - datetime.timedelta(days=1)
        leaf = self.ca.issue_cert(
            f"{name}.client.test", common_name=f"{name}.client.test", **window
        )
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
        # A connection per request: each handshake shows the certificate of that moment.
        client = subject.get("commonName")
        return web.json_response({"client": client}, headers={"Connection": "close"})

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


# --- config: keys, pairs, files, with path and line ------------------------------------------


def config_errors(text: str, tmp_path: Path) -> list[str]:
    """``mcplb check``'s errors for ``text`` (the files it names checked too)."""
    path = tmp_path / "mcplb.yaml"
    path.write_text(text)
    try:
        load_config(path, checks=machine_issues)
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []


def rule_errors(text: str) -> list[str]:
    """The loader's errors for ``text`` (files not looked at)."""
    try:
        parse_config(text)
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []


def test_client_certificate_keys_are_checked_with_path_and_line(tmp_path: Path) -> None:
    base = "backends:\n  - name: a\n    url: {url}\n"
    http = base.format(url="http://127.0.0.1:9001") + "    client_cert: /c.pem\n"
    assert rule_errors(http) == [
        "backends[0].client_cert: only used with https:// backend urls (line 4)"
    ]
    half = base.format(url="https://127.0.0.1:9001") + "    client_key: /k.pem\n"
    assert rule_errors(half) == [
        "backends[0].client_key: needs client_cert too (a client certificate and its key) (line 4)"
    ]
    shared = "backend_tls:\n  client_cert: /c.pem\n" + base.format(url="https://h")
    assert rule_errors(shared) == [
        "backend_tls.client_cert: needs client_key too (a client certificate and its key) (line 2)"
    ]
    listener = "listen_tls:\n  cert: /c\n  key: /k\n  client_ca: 5\n" + base.format(url="http://h")
    assert "listen_tls.client_ca: must be a file path (line 4)" in rule_errors(listener)


def test_unusable_certificate_files_are_named_at_their_key(
    tmp_path: Path, good: Issuer, rogue: Issuer
) -> None:
    cert, key = good.client_files("ok")
    _, other_key = rogue.client_files("other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    text = (
        "backend_tls:\n"
        f"  client_cert: '{junk}'\n"
        f"  client_key: '{key}'\n"
        "backends:\n"
        "  - name: a\n"
        "    url: https://127.0.0.1:9001\n"
        f"    client_cert: '{cert}'\n"
        f"    client_key: '{other_key}'\n"
        "  - name: b\n"
        "    url: https://127.0.0.1:9002\n"
        f"    client_cert: '{tmp_path / 'missing.pem'}'\n"
        f"    client_key: '{key}'\n"
        "listen_tls:\n"
        f"  cert: '{cert}'\n"
        f"  key: '{key}'\n"
        f"  client_ca: '{junk}'\n"
    )
    missing = f"backends[1].client_cert: no such file: {tmp_path / 'missing.pem'} (line 11)"
    bad_ca = (
        f"listen_tls.client_ca: listen_tls.client_ca {junk}: not a valid PEM CA bundle "
        "(no certificate or crl found) (line 16)"
    )
    assert config_errors(text, tmp_path) == [
        f"backend_tls.client_cert: backend_tls.client_cert {junk}: no PEM certificate in the "
        "file (line 2)",
        missing,
        bad_ca,
    ]
    # With the shared file fixed, the backend's own mismatched key is named at its key.
    text = text.replace(f"client_cert: '{junk}'", f"client_cert: '{cert}'", 1)
    assert config_errors(text, tmp_path) == [
        f"backends[0].client_key: backend a: client_key {other_key}: does not match the "
        f"certificate in {cert} (key values mismatch) (line 8)",
        missing,
        bad_ca,
    ]


def test_a_shared_client_certificate_applies_to_backends_without_their_own(
    tmp_path: Path, good: Issuer
) -> None:
    cert, key = good.client_files("shared")
    config = parse_config(
        f"backend_tls: {{client_cert: '{cert}', client_key: '{key}', ca: '{good.ca_path}'}}\n"
        "backends: [{name: a, url: 'https://127.0.0.1:9001'}]\n"
    )
    assert config.backend_tls == BackendTlsConfig(str(good.ca_path), str(cert), str(key))
    assert config.backends[0].client_cert is None  # resolved when the context is built


# --- mTLS to backends, end to end ------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP)) as session:
        yield session


async def get(http: aiohttp.ClientSession, port: int) -> tuple[int, object]:
    async with http.get(f"http://{LOOPBACK}:{port}/echo") as response:
        body = await response.json() if response.status == 200 else await response.text()
        return response.status, body


async def test_backend_requiring_client_certificates(
    start_proxy: ProxyFactory,
    serve_tls_app: ServeApp,
    http: aiohttp.ClientSession,
    good: Issuer,
    rogue: Issuer,
) -> None:
    """The backend trusts client certificates of the good CA only: a valid one passes (the
    backend sees its name); none, an expired one, one of another CA get 502."""
    port = await serve_tls_app(good.server(client_ca=good.ca_path))
    cert, key = good.client_files("relay")
    expired = good.client_files("expired", expired=True)
    foreign = rogue.client_files("foreign")
    cases = {
        "valid": ({"client_cert": str(cert), "client_key": str(key)}, 200),
        "none": ({}, 502),
        "expired": ({"client_cert": str(expired[0]), "client_key": str(expired[1])}, 502),
        "other-ca": ({"client_cert": str(foreign[0]), "client_key": str(foreign[1])}, 502),
    }
    for name, (tls, status) in cases.items():
        proxy = await start_proxy([https_backend(name, port, good.ca_path, **tls)])
        seen = await get(http, proxy.port)
        assert seen[0] == status, (name, seen)
        if status == 200:
            assert seen[1] == {"client": "relay.client.test"}

    # backend_tls gives every https backend without its own certificate the shared one.
    shared = BackendTlsConfig(ca=str(good.ca_path), client_cert=str(cert), client_key=str(key))
    url = f"https://{LOOPBACK}:{port}"
    plain = BackendConfig("shared", url, "https", LOOPBACK, port)
    proxy = await start_proxy([plain], backend_tls=shared)
    assert await get(http, proxy.port) == (200, {"client": "relay.client.test"})


async def test_probes_present_the_client_certificate(serve_tls_app: ServeApp, good: Issuer) -> None:
    port = await serve_tls_app(good.server(client_ca=good.ca_path))
    cert, key = good.client_files("prober")
    expired = good.client_files("old", expired=True)
    probe = ActiveHealthConfig(enabled=True, path="/echo", timeout=STEP)
    shared = BackendTlsConfig(client_cert=str(cert), client_key=str(key))
    verdicts = {}
    for name, tls, backend_tls in (
        ("own", {"client_cert": str(cert), "client_key": str(key)}, None),
        ("shared", {}, shared),
        ("expired", {"client_cert": str(expired[0]), "client_key": str(expired[1])}, shared),
        ("none", {}, None),
    ):
        config = Config(backends=(https_backend(name, port, good.ca_path, **tls),))
        cluster = Cluster(dataclasses.replace(config, backend_tls=backend_tls), probing=False)
        (backend,) = cluster.backends
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            verdicts[name] = (await http_probe(session, backend, probe))[0]
    assert verdicts == {"own": True, "shared": True, "expired": False, "none": False}


async def test_a_reload_reads_rotated_client_certificates(
    start_proxy: ProxyFactory,
    serve_tls_app: ServeApp,
    http: aiohttp.ClientSession,
    good: Issuer,
    rogue: Issuer,
    tmp_path: Path,
) -> None:
    """As a Kubernetes Secret volume does: the files change in place, a reload (here the
    admin's POST /reload path; SIGHUP and watch_config call the same) applies them to new
    connections, with no restart."""
    port = await serve_tls_app(good.server(client_ca=good.ca_path))
    mounted = tmp_path / "secret"
    mounted.mkdir()
    cert, key = mounted / "tls.crt", mounted / "tls.key"

    def rotate(issuer: Issuer, name: str) -> None:
        new_cert, new_key = issuer.client_files(name)
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())

    rotate(rogue, "before")  # a certificate the backend does not accept
    backend = https_backend("b", port, good.ca_path, client_cert=str(cert), client_key=str(key))
    source = tmp_path / "mcplb.yaml"
    source.write_text(
        "listen: 127.0.0.1:0\n"
        "backends:\n"
        f"  - {{name: b, url: 'https://{LOOPBACK}:{port}', ca: '{good.ca_path}',\n"
        f"     client_cert: '{cert}', client_key: '{key}'}}\n"
    )
    proxy = await start_proxy([backend], source=str(source))
    assert (await get(http, proxy.port))[0] == 502

    rotate(good, "after")
    result = await proxy.reload()
    assert result.ok, result.messages
    assert await get(http, proxy.port) == (200, {"client": "after.client.test"})


async def test_watch_config_reloads_when_a_mounted_certificate_is_rotated(
    start_proxy: ProxyFactory,
    serve_tls_app: ServeApp,
    http: aiohttp.ClientSession,
    good: Issuer,
    tmp_path: Path,
) -> None:
    """With watch_config, the files a config names are watched as the file itself is: a
    Secret rotated in place (the kubelet swaps the files) applies with no signal at all."""
    port = await serve_tls_app(good.server(client_ca=good.ca_path))
    mounted = tmp_path / "secret"
    mounted.mkdir()
    cert, key = mounted / "tls.crt", mounted / "tls.key"
    for path, new in zip((cert, key), good.client_files("first"), strict=True):
        path.write_bytes(new.read_bytes())
    source = tmp_path / "mcplb.yaml"
    source.write_text(
        "listen: 127.0.0.1:0\n"
        "watch_config: true\n"
        f"backend_tls: {{ca: '{good.ca_path}', client_cert: '{cert}', client_key: '{key}'}}\n"
        f"backends: [{{name: b, url: 'https://{LOOPBACK}:{port}'}}]\n"
    )
    shared = BackendTlsConfig(str(good.ca_path), str(cert), str(key))
    url = f"https://{LOOPBACK}:{port}"
    backend = BackendConfig("b", url, "https", LOOPBACK, port)
    proxy = await start_proxy([backend], backend_tls=shared, watch_config=True, source=str(source))
    assert await get(http, proxy.port) == (200, {"client": "first.client.test"})

    staged = mounted / "..2026_12_06"  # as the kubelet does: new files, then one rename
    staged.mkdir()
    for name, new in zip(("tls.crt", "tls.key"), good.client_files("second"), strict=True):
        (staged / name).write_bytes(new.read_bytes())
    for name in ("tls.crt", "tls.key"):
        (staged / name).replace(mounted / name)

    async def rotated() -> bool:
        return await get(http, proxy.port) == (200, {"client": "second.client.test"})

    await eventually(rotated, within=10.0, every=0.2, what="the rotated client certificate in use")
    assert source.read_text().startswith("listen:")  # the config file itself never changed


# --- client certificates on the listener (listen_tls.client_ca) --------------------------------


async def test_listener_verifies_client_certificates(
    start_proxy: ProxyFactory,
    serve_tls_app: ServeApp,
    good: Issuer,
    rogue: Issuer,
) -> None:
    backend_port = await serve_tls_app(good.server())
    server_cert, server_key = good.server_files("listener")
    listen_tls = ListenTlsConfig(str(server_cert), str(server_key), str(good.ca_path))
    url = f"https://{LOOPBACK}:{backend_port}"
    backend = BackendConfig("b", url, "https", LOOPBACK, backend_port, ca=str(good.ca_path))
    proxy = await start_proxy([backend], listen_tls=listen_tls)

    def client(files: tuple[Path, Path] | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(good.ca_path))
        if files is not None:
            context.load_cert_chain(*map(str, files))
        return context

    async def status(files: tuple[Path, Path] | None) -> int | str:
        timeout = aiohttp.ClientTimeout(total=STEP)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                target = f"https://{LOOPBACK}:{proxy.port}/echo"
                async with session.get(target, ssl=client(files)) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientError as exc:
                return type(exc).__name__

    alice, eve = good.client_files("alice"), rogue.client_files("eve")
    assert await status(alice) == 200
    for files in (None, good.client_files("late", expired=True), eve):
        assert not isinstance(await status(files), int), files

    # A reload that replaces the client CA: the old one is trusted no more (the context of
    # new handshakes is built anew, not loaded into).
    assert proxy.tls is not None
    reload_server_context(proxy.tls, dataclasses.replace(listen_tls, client_ca=str(rogue.ca_path)))
    assert not isinstance(await status(alice), int)
    assert await status(eve) == 200


def test_a_listener_without_client_ca_asks_for_no_certificate(tmp_path: Path, good: Issuer) -> None:
    cert, key = good.server_files("plain")
    context = server_context(ListenTlsConfig(str(cert), str(key)))
    assert context.verify_mode == ssl.CERT_NONE
    reload_server_context(context, ListenTlsConfig(str(cert), str(key), str(good.ca_path)))
    assert context.verify_mode == ssl.CERT_REQUIRED  # a reload turns it on
    reload_server_context(context, ListenTlsConfig(str(cert), str(key)))
    assert context.verify_mode == ssl.CERT_NONE  # and off
