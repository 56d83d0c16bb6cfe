"""Fetching the JWKS document over HTTP(S) with aiohttp: bounded in time and size, on the
event loop (never blocking it). The only I/O of edge authentication."""

from __future__ import annotations

import aiohttp

from .keys import MAX_JWKS_BYTES


async def fetch_jwks(url: str, timeout: float) -> bytes:
    """The body of ``url`` (200 only, at most MAX_JWKS_BYTES). Raises on any failure."""
    limit = aiohttp.ClientTimeout(total=timeout)
    # A session per fetch: fetches are minutes apart, and nothing outlives them to close.
    async with (
        aiohttp.ClientSession(timeout=limit, trust_env=False) as session,
        session.get(url, allow_redirects=False, headers={"accept": "application/json"}) as response,
    ):
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise OSError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return body
