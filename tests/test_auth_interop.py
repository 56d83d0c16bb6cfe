"""Edge authentication against a real OpenID provider (the npm package oidc-provider,
tests/interop/oidc_provider.mjs) issuing JWT access tokens by the client-credentials grant
with an RFC 8707 resource, and both MCP SDKs (Python ``mcp``, TypeScript 1.32) sending them
through mcplb to a real MCP server. Then the attacks: key rotation at the provider, the
provider stopped, another audience, expired, alg none, HS256 signed with the public key, a
huge token, a kid flood, a missing scope; and what the backend gets (token or identity
headers), the metadata document, the rate limit per principal. All on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.interop import INTEROP, MISSING, NODE
from tests.support.peers import (
    LOOPBACK,
    Peers,
    ProxyProcess,
    _logs,
    _ManagedProcess,
    free_port,
    wait_for_port,
)

WELL_KNOWN = "/.well-known/oauth-protected-resource"


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private))
        self.jwk = {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm="RS256", headers={"kid": self.kid, **header}
        )


def _b64std(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class OidcProvider(_ManagedProcess):
    label = "oidc-provider"

    def __init__(self, port: int, keys: list[SigningKey], folder: Path) -> None:
        self.port = port
        self.issuer = f"http://{LOOPBACK}:{port}"
        path = folder / f"jwks-{'-'.join(k.kid for k in keys)}.json"
        path.write_text(json.dumps({"keys": [k.jwk for k in keys]}))
        log = _logs() / f"oidc-provider-{port}.log"
        argv = [str(NODE), str(INTEROP / "oidc_provider.mjs"), "--port", str(port)]
        super().__init__(
            [*argv, "--keys", str(path)], stdout_path=log, stderr_path=log, own_group=False
        )

    async def token(self, resource: str, client: str = "mcp-client") -> str:
        secret, scope = {
            "mcp-client": ("mcp-secret", "mcp:tools"),
            "reader": ("reader-secret", "mcp:read"),
        }[client]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.issuer}/token",
                data={"grant_type": "client_credentials", "resource": resource, "scope": scope},
                headers={"authorization": "Basic " + _b64std(f"{client}:{secret}")},
            ) as response,
        ):
            body = await response.json()
            assert response.status == 200, body
            return str(body["access_token"])

    async def jwks_fetches(self) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.issuer}/test/jwks-count") as response,
        ):
            return int((await response.json())["count"])


async def start_provider(port: int, keys: list[SigningKey], folder: Path) -> OidcProvider:
    provider = OidcProvider(port, keys, folder)
    try:
        await wait_for_port(LOOPBACK, port, 20.0, process=provider)
    except BaseException:
        await provider.kill()
        raise
    return provider


class Edge:
    """A provider, an MCP backend and mcplb with auth on, for one test."""

    def __init__(self, provider: OidcProvider, proxy: ProxyProcess, port: int) -> None:
        self.provider = provider
        self.proxy = proxy
        self.resource = f"http://{LOOPBACK}:{port}/mcp"

    async def token(self, client: str = "mcp-client", resource: str | None = None) -> str:
        return await self.provider.token(resource or self.resource, client)


def auth_yaml(proxy_port: int, provider_port: int, backend_url: str, extra: str = "") -> str:
    issuer = f"http://{LOOPBACK}:{provider_port}"
    return f"""
listen: "{LOOPBACK}:{proxy_port}"
backends:
  - name: a
    url: {backend_url}
auth:
  resource: http://{LOOPBACK}:{proxy_port}/mcp
  scopes_supported: [mcp:tools]
  jwt:
    issuer: {issuer}
    jwks_url: {issuer}/jwks
    algorithms: [RS256, ES256]
    jwks_min_refresh: 1s
    leeway: 0s
{extra}"""


@pytest.fixture
def key_a() -> SigningKey:
    return SigningKey("key-a")


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    assert NODE.exists(), MISSING
    async with Peers() as p:
        yield p


@pytest.fixture
async def edge(peers: Peers, tmp_path: Path, key_a: SigningKey) -> AsyncIterator[Edge]:
    provider = await start_provider(free_port(), [key_a], tmp_path)
    peers.started.append(provider)
    backend = await peers.backend("a")
    port = free_port()
    proxy = await peers.proxy(auth_yaml(port, provider.port, backend.url), tmp_path, port=port)
    yield Edge(provider, proxy, port)


async def post_mcp(
    url: str, token: str | None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """An initialize POST with ``token``: status, headers, body."""
    sent = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=sent) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def python_sdk_session(url: str, token: str) -> tuple[list[str], str]:
    """The Python SDK over Streamable HTTP with the token: the tools and whoami's answer."""
    client = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=15.0)
    with anyio.fail_after(20):
        async with (
            client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = sorted(tool.name for tool in (await session.list_tools()).tools)
            result = await session.call_tool("whoami", {})
            return tools, "".join(getattr(b, "text", "") for b in result.content)


async def ts_sdk_session(url: str, token: str | None) -> dict[str, Any]:
    argv = [str(NODE), str(INTEROP / "ts_auth_client.mjs"), "--url", url]
    if token is not None:
        argv += ["--token", token]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=INTEROP
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    record: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return record


def challenge_of(headers: dict[str, str]) -> str:
    return headers.get("WWW-Authenticate", "")


# --- the clients ------------------------------------------------------------------------


async def test_both_sdk_clients_pass_with_tokens_from_the_provider(edge: Edge) -> None:
    token = await edge.token()
    tools, name = await python_sdk_session(edge.resource, token)
    assert "whoami" in tools and name == "a"
    record = await ts_sdk_session(edge.resource, token)
    assert record["ok"], record
    assert record["name"] == "a" and record["sum"] == "5"
    # Without a token the TypeScript client is refused (the SDK shows our 401's body).
    refused = await ts_sdk_session(edge.resource, None)
    assert not refused["ok"] and "a bearer token is required" in refused["error"], refused


async def test_no_token_gets_401_with_the_metadata_url(edge: Edge) -> None:
    status, headers, body = await post_mcp(edge.resource, None)
    assert status == 401
    metadata = f"http://{LOOPBACK}:{edge.proxy.port}{WELL_KNOWN}/mcp"
    # RFC 6750 3.1: no error code when the request had no token at all.
    assert challenge_of(headers) == f'Bearer resource_metadata="{metadata}"'
    assert json.loads(body)["error"] == "unauthorized"


async def test_protected_resource_metadata_from_config_only(edge: Edge) -> None:
    url = f"http://{LOOPBACK}:{edge.proxy.port}"
    expected = {
        "resource": edge.resource,
        "authorization_servers": [edge.provider.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
    }
    async with aiohttp.ClientSession() as session:
        for path in (WELL_KNOWN, WELL_KNOWN + "/mcp"):
            headers = {"x-forwarded-host": "evil.example", "x-forwarded-proto": "https"}
            async with session.get(url + path, headers=headers) as response:
                assert response.status == 200
                assert response.headers["content-type"] == "application/json"
                assert await response.json() == expected
        async with session.post(url + WELL_KNOWN, data=b"{}") as response:
            assert response.status == 405 and response.headers["allow"] == "GET"
        # Another path under the well-known prefix is no metadata: it needs a token.
        async with session.get(url + WELL_KNOWN + "/other") as response:
            assert response.status == 401


async def test_with_auth_off_the_metadata_paths_pass_through(peers: Peers, tmp_path: Path) -> None:
    backend = await peers.backend("a")
    port = free_port()
    config = f'listen: "{LOOPBACK}:{port}"\nbackends:\n  - name: a\n    url: {backend.url}\n'
    proxy = await peers.proxy(config, tmp_path, port=port)
    async with aiohttp.ClientSession() as session:
        for path in (WELL_KNOWN, WELL_KNOWN + "/mcp"):
            async with session.get(backend.url + path) as direct:
                direct_status, direct_body = direct.status, await direct.read()
            async with session.get(proxy.url + path) as proxied:
                assert (proxied.status, await proxied.read()) == (direct_status, direct_body)


# --- the attacks ------------------------------------------------------------------------


async def test_key_rotation_at_the_provider_without_restarting_mcplb(
    edge: Edge, peers: Peers, tmp_path: Path
) -> None:
    old = await edge.token()
    assert (await post_mcp(edge.resource, old))[0] == 200
    # The provider rotates: key-a is gone, key-b signs.
    await edge.provider.stop()
    key_b = SigningKey("key-b")
    provider = await start_provider(edge.provider.port, [key_b], tmp_path)
    peers.started.append(provider)
    new = await provider.token(edge.resource)
    # An unknown kid fetches the JWKS at most once per jwks_min_refresh (1 s): wait it out
    # since the startup fetch, which is the behaviour under test, not a race.
    await asyncio.sleep(1.1)
    assert (await post_mcp(edge.resource, new))[0] == 200
    status, headers, body = await post_mcp(edge.resource, old)
    assert status == 401
    assert 'error="invalid_token"' in challenge_of(headers)
    assert json.loads(body)["message"] == "token signing key not known"
    assert old.encode() not in body
    assert (await post_mcp(edge.resource, new))[0] == 200


async def test_provider_stopped_cached_keys_keep_working(edge: Edge) -> None:
    used, fresh = await edge.token(), await edge.token()
    assert (await post_mcp(edge.resource, used))[0] == 200
    await edge.provider.kill()
    # The verified token, and one never seen (verified with the keys held).
    assert (await post_mcp(edge.resource, used))[0] == 200
    assert (await post_mcp(edge.resource, fresh))[0] == 200
    _tools, name = await python_sdk_session(edge.resource, fresh)
    assert name == "a"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(edge: Edge, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": edge.provider.issuer,
        "sub": "attacker",
        "aud": edge.resource,
        "exp": now + 300,
        "iat": now,
        "scope": "mcp:tools",
    }
    claims.update(changes)
    return claims


async def test_forged_and_foreign_tokens_get_401(edge: Edge, key_a: SigningKey) -> None:
    other_audience = await edge.token(resource="https://other.example/mcp")
    unsigned = ".".join(
        [
            _b64(json.dumps({"alg": "none", "kid": "key-a"}).encode()),
            _b64(json.dumps(_claims(edge)).encode()),
            "",
        ]
    )
    # HS256 "signed" with the public key: an HMAC verifier given the PEM would accept it.
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "key-a"}).encode())
    payload = _b64(json.dumps(_claims(edge)).encode())
    mac = hmac.new(key_a.public_pem, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    hs256 = f"{head}.{payload}.{_b64(mac)}"
    huge = key_a.sign(_claims(edge), pad="x" * 20000)
    cases = {
        "another audience": (other_audience, "token not issued for this resource (aud)"),
        "expired": (
            key_a.sign(_claims(edge, exp=int(time.time()) - 60)),
            "token expired",
        ),
        "another issuer": (
            key_a.sign(_claims(edge, iss="http://127.0.0.1:1")),
            "token from another issuer (iss)",
        ),
        "alg none": (unsigned, "token algorithm not accepted"),
        "HS256 with the public key": (hs256, "token algorithm not accepted"),
        "huge header": (huge, "token larger than max_token_bytes"),
        "garbage": ("not.a.jwt", "malformed token"),
        "tampered": (key_a.sign(_claims(edge))[:-4] + "AAAA", "token signature invalid"),
    }
    for case, (token, message) in cases.items():
        status, headers, body = await post_mcp(edge.resource, token)
        assert status == 401, case
        assert challenge_of(headers).startswith('Bearer error="invalid_token"'), case
        assert json.loads(body) == {"error": "invalid_token", "message": message}, case
        assert token.encode() not in body, case
    # One log line for all these refusals of one client (once per client per interval).
    assert edge.proxy.output().count("auth: 401") == 1, edge.proxy.output()


async def test_kid_flood_does_not_hammer_the_provider(edge: Edge, key_a: SigningKey) -> None:
    good = await edge.token()
    assert (await post_mcp(edge.resource, good))[0] == 200
    before = await edge.provider.jwks_fetches()
    tokens = [key_a.sign(_claims(edge), kid=f"flood-{i}") for i in range(200)]
    started = time.monotonic()
    statuses = await asyncio.gather(*(post_mcp(edge.resource, t) for t in tokens[:100]))
    statuses += [await post_mcp(edge.resource, t) for t in tokens[100:]]
    elapsed = time.monotonic() - started
    assert {s[0] for s in statuses} == {401}
    # jwks_min_refresh is 1 s: at most one fetch per started second of the flood (200
    # tokens, each with a new kid), not one per token.
    fetched = await edge.provider.jwks_fetches() - before
    assert fetched <= 1 + int(elapsed), (fetched, elapsed)
    assert (await post_mcp(edge.resource, good))[0] == 200


# --- scopes, what the backend gets, the rate limit --------------------------------------


@pytest.fixture
async def echo_backend() -> AsyncIterator[str]:
    """An HTTP backend answering each request with the headers it got (JSON)."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response([[k.lower(), v] for k, v in request.headers.items()])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    yield f"http://{LOOPBACK}:{port}"
    await runner.cleanup()


async def proxy_for(
    peers: Peers, tmp_path: Path, backend_url: str, extra: str, key: SigningKey
) -> tuple[OidcProvider, ProxyProcess, str]:
    provider = await start_provider(free_port(), [key], tmp_path)
    peers.started.append(provider)
    port = free_port()
    proxy = await peers.proxy(
        auth_yaml(port, provider.port, backend_url, extra), tmp_path, port=port
    )
    return provider, proxy, f"http://{LOOPBACK}:{port}/mcp"


async def echoed(url: str, token: str, headers: dict[str, str]) -> dict[str, list[str]]:
    status, _, body = await post_mcp(url, token, headers)
    assert status == 200, body
    found: dict[str, list[str]] = {}
    for name, value in json.loads(body):
        found.setdefault(name, []).append(value)
    return found


async def test_identity_headers_replace_the_token_and_client_copies_are_removed(
    peers: Peers, tmp_path: Path, echo_backend: str, key_a: SigningKey
) -> None:
    extra = "  forward_token: false\n  identity_headers: {subject: x-user, scopes: x-scopes}\n"
    provider, _, url = await proxy_for(peers, tmp_path, echo_backend, extra, key_a)
    token = await provider.token(url)
    forged = {"x-user": "admin", "X-Scopes": "everything"}
    got = await echoed(url, token, forged)
    assert "authorization" not in got
    assert got["x-user"] == ["mcp-client"] and got["x-scopes"] == ["mcp:tools"]


async def test_forward_token_passes_authorization_and_strips_identity_headers(
    peers: Peers, tmp_path: Path, echo_backend: str, key_a: SigningKey
) -> None:
    provider, _, url = await proxy_for(peers, tmp_path, echo_backend, "", key_a)
    token = await provider.token(url)
    got = await echoed(url, token, {"x-auth-subject": "admin", "x-auth-scopes": "all"})
    assert got["authorization"] == [f"Bearer {token}"]
    assert "x-auth-subject" not in got and "x-auth-scopes" not in got


async def test_missing_scope_gets_403_insufficient_scope(
    peers: Peers, tmp_path: Path, echo_backend: str, key_a: SigningKey
) -> None:
    extra = "    required_scopes: [mcp:tools]\n"
    provider, _, url = await proxy_for(peers, tmp_path, echo_backend, extra, key_a)
    status, headers, _body = await post_mcp(url, await provider.token(url, "reader"))
    assert status == 403
    challenge = challenge_of(headers)
    assert challenge.startswith('Bearer error="insufficient_scope", scope="mcp:tools"')
    assert "resource_metadata=" in challenge
    assert (await post_mcp(url, await provider.token(url)))[0] == 200


async def test_rate_limit_keyed_on_the_principal(
    peers: Peers, tmp_path: Path, echo_backend: str, key_a: SigningKey
) -> None:
    extra = "rate_limit: {rate: 1/h, burst: 1, key: principal}\n"
    provider, _, url = await proxy_for(peers, tmp_path, echo_backend, extra, key_a)
    client, reader = await provider.token(url), await provider.token(url, "reader")
    assert (await post_mcp(url, client))[0] == 200
    assert (await post_mcp(url, client))[0] == 429  # same principal, same address
    assert (await post_mcp(url, reader))[0] == 200  # another principal, same address
