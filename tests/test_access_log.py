"""The access log: buffered writes that lose no line, and a line for every request, including
those the client abandoned (an aborted upload, a closed stream, pipelined requests)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mcplb.proxy.config.schema import LogConfig
from mcplb.proxy.observability.access_log import PIPE_BUF, AccessLog, BufferedWriter, _whole_lines
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.eventually import eventually
from tests.support.peers import Peers, free_port, wait_for_output
from tests.support.rawhttp import RawClient

JSON_LOG = LogConfig(format="json")


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcplb.access"]


@pytest.fixture
def access_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # An in-process proxy (no install()) hands its lines to the mcplb.access logger.
    caplog.set_level(logging.INFO, logger="mcplb.access")
    return caplog


# --------------------------------------------------------------------------- the writer


def test_pipe_pieces_are_whole_lines_within_pipe_buf() -> None:
    lines = [b"x" * (n % 300) for n in range(400)] + [b"y" * (3 * PIPE_BUF)] + [b"z"] * 50
    data = b"".join(line + b"\n" for line in lines)
    pieces = _whole_lines(data, PIPE_BUF)
    assert b"".join(pieces) == data
    assert all(piece.endswith(b"\n") for piece in pieces)
    long = [piece for piece in pieces if len(piece) > PIPE_BUF]
    assert long == [b"y" * (3 * PIPE_BUF) + b"\n"]  # a longer line goes alone, whole
    assert len(pieces) < len(lines) / 10  # and the others are batched


async def test_writer_flushes_by_size_by_time_and_when_asked() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    writer = BufferedWriter(write_end, flush_bytes=1024, flush_seconds=0.1)
    assert writer.piece == PIPE_BUF  # a pipe: written in whole-line pieces

    def available() -> bytes:
        try:
            return os.read(read_end, 1 << 20)
        except BlockingIOError:
            return b""

    try:
        writer.append("first")
        assert available() == b""  # buffered
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(read_end, ready.set)
        started = loop.time()
        await asyncio.wait_for(ready.wait(), 2.0)
        loop.remove_reader(read_end)
        assert loop.time() - started >= 0.09  # by time, not at once
        assert available() == b"first\n"
        for n in range(30):  # 30 lines of 40 bytes pass flush_bytes: out without waiting
            writer.append(f"{n:039d}")
        assert available().count(b"\n") == 26
        writer.flush()
        assert available().count(b"\n") == 4
        assert writer.timer is None
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_process_that_dies_with_an_exception_still_writes_its_lines(tmp_path: Path) -> None:
    script = (
        "import asyncio\n"
        "from mcplb.proxy.observability import access_log\n"
        "access_log.install(1)\n"
        "async def main():\n"
        "    for n in range(5):\n"
        "        access_log._writer.append(f'line {n}')\n"
        "    raise RuntimeError('the writer crashed')\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 1
    assert b"the writer crashed" in done.stderr
    assert done.stdout.decode().splitlines() == [f"line {n}" for n in range(5)]


def test_json_line_is_what_json_dumps_gives() -> None:
    out: list[str] = []
    AccessLog(True, out.append).request(
        "127.0.0.1", "GET", '/a"b\\c\x01é', "1.1", 200, "a", 0.25, 3, 4, "-", 'id "q"', False
    )
    (line,) = out
    fields = json.loads(line)
    # json.dumps's text, but for the duration: six decimals (microseconds), always.
    assert line == json.dumps(fields).replace('"duration": 0.25,', '"duration": 0.250000,')
    assert fields["path"] == '/a"b\\c\x01é'
    assert fields["request_id"] == 'id "q"'
    assert (fields["status"], fields["duration"], fields["client_left"]) == (200, 0.25, False)


# --------------------------------------------------------------------------- every request


Holding = tuple[int, asyncio.Queue[bytes], asyncio.Event]


@pytest.fixture
async def holding_backend(serve_raw: Any) -> AsyncIterator[Holding]:
    """A backend that reads what it is sent (reported on the queue) and answers only a GET
    for a stream (an event-stream head and one event) and, once the event is set, a GET for
    /first; then it holds until the proxy closes."""
    received: asyncio.Queue[bytes] = asyncio.Queue()
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.put_nowait(head)
        if head.startswith(b"GET /first"):
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif head.startswith(b"GET /stream"):
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + b"f\r\ndata: hello\r\n\r\n\r\n"
            )
        while data := await reader.read(65536):
            received.put_nowait(data)

    yield await serve_raw(handler), received, release


async def test_aborted_upload_is_logged_as_499(
    start_proxy: ProxyFactory,
    holding_backend: Holding,
    access_records: pytest.LogCaptureFixture,
) -> None:
    port, received, _ = holding_backend
    # request_buffer 0: the head goes to the backend before the body is read.
    proxy = await start_proxy(
        [backend_config("a", port)], log=JSON_LOG, limits={"request_buffer": 0}
    )
    client = await RawClient.connect(proxy.port)
    await client.send(
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Request-Id: up-1\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10
    )
    await asyncio.wait_for(received.get(), 5)  # the backend has the head: the upload runs
    await client.close()
    (line,) = await eventually(lambda: json_lines(access_records))
    assert line["status"] == 499
    assert line["client_left"] is True
    assert (line["method"], line["path"], line["request_id"]) == ("POST", "/mcp", "up-1")
    assert line["backend"] == "a"
    assert line["bytes_in"] == 10
    assert line["bytes_out"] == 0


async def test_closed_stream_is_logged_with_what_was_sent(
    start_proxy: ProxyFactory,
    holding_backend: Holding,
    access_records: pytest.LogCaptureFixture,
) -> None:
    port, _, _ = holding_backend
    proxy = await start_proxy([backend_config("a", port)], log=JSON_LOG)
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    got = b""
    while b"data: hello" not in got:
        chunk = await asyncio.wait_for(client.reader.read(65536), 5)
        assert chunk, "the proxy closed the stream"
        got += chunk
    await client.close()
    (line,) = await eventually(lambda: json_lines(access_records))
    # As nginx: the status that was sent, the bytes of the body relayed so far.
    assert line["status"] == 200
    assert line["client_left"] is True
    assert line["path"] == "/stream"
    assert line["bytes_out"] > 0


async def test_pipelined_request_of_a_client_that_left_is_logged(
    start_proxy: ProxyFactory,
    holding_backend: Holding,
    access_records: pytest.LogCaptureFixture,
) -> None:
    port, received, release = holding_backend
    proxy = await start_proxy([backend_config("a", port)], log=JSON_LOG)
    client = await RawClient.connect(proxy.port)
    await client.send(
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await asyncio.wait_for(received.get(), 5)  # the first is at the backend, unanswered
    await client.close()
    # Reading waits while the first is answered, so the proxy sees the close after that,
    # with the second sent on to the backend and unanswered.
    release.set()
    lines = await eventually(
        lambda: len(json_lines(access_records)) == 2 and json_lines(access_records)
    )
    assert [x["path"] for x in lines] == ["/first", "/second"]
    assert (lines[1]["status"], lines[1]["client_left"], lines[1]["bytes_out"]) == (499, True, 0)


async def test_answered_request_says_the_client_stayed(
    start_proxy: ProxyFactory, serve_app: AppFactory, access_records: pytest.LogCaptureFixture
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", ok)
    proxy = await start_proxy([backend_config("a", await serve_app(app))], log=JSON_LOG)
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{proxy.port}/x") as r:
        assert r.status == 200
    (line,) = await eventually(lambda: json_lines(access_records))
    assert (line["status"], line["client_left"], line["bytes_out"]) == (200, False, 2)


# --------------------------------------------------------------------------- mcplb run


def ok_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    return app


async def get_many(port: int, count: int, connections: int) -> None:
    connector = aiohttp.TCPConnector(limit=connections, force_close=connections > 1)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(n: int) -> None:
            async with http.get(f"http://127.0.0.1:{port}/r{n}") as resp:
                assert resp.status == 200

        await asyncio.gather(*(one(n) for n in range(count)))


async def test_no_line_lost_on_sighup_and_sigterm(serve_app: AppFactory, tmp_path: Path) -> None:
    backend = await serve_app(ok_app())
    port = free_port()
    async with Peers() as peers:
        proxy = await peers.proxy(
            f"listen: 127.0.0.1:{port}\nbackends:\n  - {{name: a, url: 'http://127.0.0.1:{backend}'}}\n",
            tmp_path,
            port=port,
        )
        await get_many(port, 200, 1)
        proxy.send_signal(signal.SIGHUP)
        await wait_for_output(proxy, "config reloaded")
        assert proxy.stdout().count('" 200 2 backend=a') == 200  # written before the reload
        await get_many(port, 300, 1)
        proxy.send_signal(signal.SIGTERM)  # at once: most of these lines are still buffered
        assert await proxy.wait(15) == 0
        lines = proxy.stdout().splitlines()
        assert len(lines) == 500
        assert all('" 200 2 backend=a duration=' in line for line in lines)
        assert {line.split()[6] for line in lines} == {f"/r{n}" for n in range(300)}


async def test_two_workers_on_a_pipe_write_whole_lines(
    serve_app: AppFactory, tmp_path: Path
) -> None:
    backend = await serve_app(ok_app())
    port = free_port()
    config = tmp_path / "mcplb.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nworkers: 2\nlog: {{format: json}}\n"
        "sticky: {mcp_sessions: false}\nadmin: {listen: '127.0.0.1:0'}\n"
        f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend}'}}\n"
    )
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcplb.proxy.cli", "run", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,
        )  # fmt: skip
    assert proc.stdout is not None
    reading = asyncio.ensure_future(proc.stdout.read())
    try:
        await eventually(lambda: _accepts(port) or proc.returncode is not None, within=30)
        assert proc.returncode is None, stderr.read_text()
        await get_many(port, 1500, 20)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, stderr.read_text()
        out = await asyncio.wait_for(reading, 5)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        reading.cancel()
    lines = [json.loads(line) for line in out.decode().splitlines()]  # none torn apart
    assert len(lines) == 1500
    assert {line["path"] for line in lines} == {f"/r{n}" for n in range(1500)}


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_closed_stdout_sends_the_lines_to_the_application_log(
    serve_app: AppFactory, tmp_path: Path
) -> None:
    backend = await serve_app(ok_app())
    port = free_port()
    config = tmp_path / "mcplb.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: {{listen: '127.0.0.1:0'}}\n"
        f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend}'}}\n"
    )
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", 'exec "$0" "$@" 1>&-',  # as `mcplb run >&-`
            sys.executable, "-m", "mcplb.proxy.cli", "run", "--config", str(config),
            stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        await eventually(lambda: _accepts(port) or proc.returncode is not None, within=30)
        await get_many(port, 3, 1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, stderr.read_text()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = stderr.read_text()
    assert "access log: stdout unusable" in text
    assert text.count('" 200 2 backend=a') == 3
    assert "Traceback" not in text
