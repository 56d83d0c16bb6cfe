"""Flow control: 1 GiB each way through a real mcplb process with a stalled peer.

When the receiving side stops reading, the proxy must stop reading from the sending
side, so its memory stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from tests.conftest import AppFactory
from tests.support.peers import Peers, free_port

GIB = 1 << 30
PIECE = b"x" * (1 << 20)
# Sockets and the proxy's write buffers may hold this much in flight; far below 1 GiB.
IN_FLIGHT_BOUND = 96 << 20
RSS_GROWTH_BOUND = 64 << 20


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def until_stalled(progress: Callable[[], int], limit: float = 20.0) -> int:
    """Wait until ``progress()`` stops growing (the sender is blocked); return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = -1
    while loop.time() < deadline:
        now = progress()
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.3)  # sampling interval of a measurement, not a synchronisation
    raise AssertionError("the sender never stalled: nothing is holding it back")


async def start(peers: Peers, tmp_path: Path, backend_port: int) -> tuple[int, int]:
    port = free_port()
    proxy = await peers.proxy(
        f"listen: 127.0.0.1:{port}\n"
        "limits: {max_body_bytes: 0}\n"
        f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend_port}'}}\n",
        tmp_path,
        port=port,
    )
    return port, proxy.pid


async def test_download_with_stalled_client(serve_app: AppFactory, tmp_path: Path) -> None:
    written = 0

    async def source(req: web.Request) -> web.StreamResponse:
        nonlocal written
        resp = web.StreamResponse(headers={"Content-Length": str(GIB)})
        await resp.prepare(req)
        while written < GIB:
            await resp.write(PIECE)
            written += len(PIECE)
        return resp

    app = web.Application()
    app.router.add_get("/", source)
    backend_port = await serve_app(app)
    async with Peers() as peers:
        port, pid = await start(peers, tmp_path, backend_port)
        baseline = peak_rss(pid)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        # The client reads nothing more: the backend must be held back.
        stalled_at = await until_stalled(lambda: written)
        assert stalled_at < IN_FLIGHT_BOUND
        received = 0
        while received < GIB:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert chunk, "connection closed early"
            received += len(chunk)
        assert received == GIB
        assert peak_rss(pid) - baseline < RSS_GROWTH_BOUND
        writer.close()


async def test_upload_with_stalled_backend(serve_app: AppFactory, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def sink(req: web.Request) -> web.Response:
        await release.wait()
        total = 0
        async for piece in req.content.iter_any():
            total += len(piece)
        return web.Response(text=str(total))

    app = web.Application(client_max_size=2 * GIB)
    app.router.add_post("/", sink)
    backend_port = await serve_app(app)
    async with Peers() as peers:
        port, pid = await start(peers, tmp_path, backend_port)
        baseline = peak_rss(pid)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = 0

        async def upload() -> None:
            nonlocal sent
            writer.write(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % GIB)
            while sent < GIB:
                writer.write(PIECE)
                await writer.drain()
                sent += len(PIECE)

        uploading = asyncio.create_task(upload())
        stalled_at = await until_stalled(lambda: sent)
        assert stalled_at < IN_FLIGHT_BOUND
        release.set()
        await asyncio.wait_for(uploading, 60)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200 ")
        body = await asyncio.wait_for(reader.read(100), 5)
        assert body == str(GIB).encode()
        assert peak_rss(pid) - baseline < RSS_GROWTH_BOUND
        writer.close()
