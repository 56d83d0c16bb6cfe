"""Memory a queued upload holds in a real proxy process (issue 29, N4).

While a request waits for a backend slot its body is buffered up to 256 KiB, then reading
pauses. The check came after appending, so one more read (uvloop reads up to 250 KB at a
time) went in past the limit: the audit measured about 470 KiB per queued upload. Now
reading pauses before a read could take the buffer past the limit. Measured as the
resident memory the proxy gains for 60 queued 1 MiB uploads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.conftest import session_app
from tests.support.peers import Peers, free_port
from tests.support.rawhttp import RawClient

UPLOADS = 60
BODY = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def settled_rss(pid: int) -> int:
    """The resident size once it stops moving (the proxy is done reading)."""
    last = rss_kib(pid)
    for _ in range(50):
        await asyncio.sleep(0.1)
        now = rss_kib(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


async def test_a_queued_upload_holds_at_most_the_body_buffer(tmp_path: Path) -> None:
    runner = web.AppRunner(session_app("a"), handle_signals=False)
    await runner.setup()
    backend = free_port()
    await web.TCPSite(runner, "127.0.0.1", backend).start()
    port = free_port()
    config = f"""
listen: 127.0.0.1:{port}
allowed_hosts: [localhost]
log: {{access: false}}
limits: {{queue_timeout: 60s, max_body_bytes: 10MiB}}
timeouts: {{body: 60s}}
backends: [{{name: a, url: "http://127.0.0.1:{backend}", max_connections: 1}}]
"""
    clients: list[RawClient] = []
    try:
        async with Peers() as peers:
            proxy = await peers.proxy(config, tmp_path, port=port)
            holder = await RawClient.connect(port)  # holds the one slot
            await holder.send(b"GET /slow?s=8 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            clients.append(holder)
            # Warm up: connections and their first reads allocate what stays.
            warm = await RawClient.connect(port)
            clients.append(warm)
            await warm.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            before = await settled_rss(proxy.pid)
            head = (
                f"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: {BODY}\r\n\r\n"
            ).encode()
            for _ in range(UPLOADS):
                client = await RawClient.connect(port)
                client.writer.write(head + b"u" * BODY)  # the kernel takes what it can
                clients.append(client)
            after = await settled_rss(proxy.pid)
            per_upload = (after - before) / UPLOADS
            print(f"resident memory per queued 1 MiB upload: {per_upload:.0f} KiB")
            # The 256 KiB buffer, the connection's own objects, allocator slack.
            assert per_upload < 330, per_upload
    finally:
        for client in clients:
            client.writer.transport.abort()
        await runner.cleanup()
