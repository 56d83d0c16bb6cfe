"""Memory a client can make one mcplb worker hold, measured (issue 29, N4).

    .venv/bin/python bench/client_memory.py [--connections 300]

Starts one proxy process (defaults, but for the address caps lifted so that one
benchmark address can open them all) in front of a backend that answers after 30 s (so
uploads queue behind ``max_connections: 1``), and measures its resident memory (VmRSS)
after each of: idle keep-alive connections, unfinished 60 KiB request heads, uploads whose
body is being buffered (``request_buffer``), uploads queued for a slot. Prints KiB per
connection for each; docs/benchmarks.md turns them into the worst case per client and in
total with the default caps.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def settled(pid: int) -> int:
    last = rss_kib(pid)
    for _ in range(60):
        await asyncio.sleep(0.2)
        now = rss_kib(pid)
        if abs(now - last) < 128:
            return now
        last = now
    return last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    n = args.connections

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    backend = free_port()
    await web.TCPSite(runner, "127.0.0.1", backend).start()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-mem-"))
    config = tmp / "mcplb.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: {{enabled: false}}\nlog: {{access: false}}\n"
        f"limits: {{max_connections_per_client: {10 * n}, queue_timeout: 60s}}\n"
        "timeouts: {keepalive: 120s, header: 120s, body: 120s}\n"
        f'backends: [{{name: a, url: "http://127.0.0.1:{backend}", max_connections: 1}}]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcplb.proxy.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                time.sleep(0.1)
        # One request held by the backend: every upload after it queues.
        _, holder = await asyncio.open_connection("127.0.0.1", port)
        holder.write(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        writers.append(holder)
        rows = []
        cases = {
            "idle keep-alive connection": b"",
            "unfinished 60 KiB request head": (
                b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"p" * 60 * 1024
            ),
            "upload being buffered (60 KiB of a 1 MiB body)": (
                b"POST /u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n"
                + b"u" * 60 * 1024
            ),
            "upload queued for a slot (1 MiB sent)": (
                b"POST /u HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n"
                + b"u" * 1048576
            ),
        }
        for label, data in cases.items():
            before = await settled(proc.pid)
            for _ in range(n):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                if data:
                    w.write(data)
                writers.append(w)
            after = await settled(proc.pid)
            rows.append((label, (after - before) / n))
        print(f"resident memory one mcplb worker gains per connection ({n} each):")
        for label, kib in rows:
            print(f"  {label:<48} {kib:7.1f} KiB")
    finally:
        for w in writers:
            w.transport.abort()
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
