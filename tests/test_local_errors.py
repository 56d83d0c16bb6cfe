"""The proxy's own resource exhaustion is not a backend failure (issue 29, N5).

A real proxy process whose descriptor limit is lowered (prlimit) while an attacker holds
connections: a request that needs a new backend connection then fails with EMFILE in the
proxy. Before, that fed passive health (the backend ejected) and forgot the request's
session binding (every session answered 404 after the attacker left). Now it gets 503,
and afterwards every session is whole and every backend serves.
"""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

from aiohttp import web

from tests.conftest import session_app
from tests.support.peers import Peers, free_port
from tests.support.rawhttp import RawClient

OPEN = b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"


def in_session(session: str) -> bytes:
    return f"GET /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {session}\r\n\r\n".encode()


async def serve(name: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(session_app(name), handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_fd_exhaustion_gets_503_and_blames_no_backend(tmp_path: Path) -> None:
    runners = [await serve(name) for name in ("a", "b")]
    port = free_port()
    config = f"""
listen: 127.0.0.1:{port}
allowed_hosts: [localhost]
strategy: round_robin
sticky: {{store: memory}}
log: {{access: false}}
timeouts: {{upstream_keepalive: 0.1s}}
retries: {{attempts: 0}}
health: {{passive: {{consecutive_failures: 1}}}}
backends:
  - {{name: a, url: "http://127.0.0.1:{runners[0][1]}"}}
  - {{name: b, url: "http://127.0.0.1:{runners[1][1]}"}}
"""
    attackers: list[RawClient] = []
    try:
        async with Peers() as peers:
            proxy = await peers.proxy(config, tmp_path, port=port)
            client = await RawClient.connect(port)  # the victim, connected before
            sessions: dict[str, str] = {}
            for _ in range(8):
                await client.send(OPEN)
                opened = await client.response()
                session = opened.header("mcp-session-id")
                assert opened.status == 200 and session is not None
                sessions[session] = opened.body.decode()
            assert sorted(sessions.values()).count("a") == 4
            await asyncio.sleep(0.5)  # the pooled backend connections expire (0.1 s)
            limit = open_fds(proxy.pid) + 3
            soft, hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (limit, hard))
            for _ in range(3):  # the attacker takes the last descriptors
                attacker = await RawClient.connect(port)
                await attacker.send(b"GET /slow?s=30 HTTP/1.1\r\nHost: localhost\r\n")
                attackers.append(attacker)
            for _ in range(100):
                if open_fds(proxy.pid) >= limit:
                    break
                await asyncio.sleep(0.02)
            assert open_fds(proxy.pid) >= limit
            statuses = []
            for session in sessions:
                await client.send(in_session(session))
                statuses.append((await client.response()).status)
            assert set(statuses) == {503}, statuses  # the proxy's own fault, said so
            for attacker in attackers:
                await attacker.close()
            attackers = []
            resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (soft, hard))
            for session, owner in sessions.items():
                await client.send(in_session(session))
                answer = await client.response()
                assert (answer.status, answer.body.decode()) == (200, owner), session
            served = set()
            for _ in range(4):  # round robin: both backends still take new work
                fresh = await RawClient.connect(port)
                await fresh.send(b"GET /new HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = await fresh.response()
                assert answer.status == 200
                served.add(answer.body.decode())
                await fresh.close()
            assert served == {"a", "b"}
            await client.close()
            assert "Traceback" not in proxy.output()
    finally:
        for attacker in attackers:
            await attacker.close()
        for runner, _ in runners:
            await runner.cleanup()
