"""A minimal HTTP/1.1 client for byte-exact relay tests (parses with llhttp)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httptools


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # body pieces as llhttp saw them

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


class _Collector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.current = Response()
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = False
        self.eof_body = False

    def on_message_begin(self) -> None:
        self.current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.decode().lower(), value.decode()))

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()
        if self.head_only and self.current.status >= 200:
            self.responses.append(self.current)
            # llhttp would wait for the body a HEAD response only announces.
            self.parser = httptools.HttpResponseParser(self)
            self.head_only = False

    def on_body(self, body: bytes) -> None:
        self.current.body += body
        self.current.chunks.append(body)

    def on_message_complete(self) -> None:
        # By identity: two equal responses in a row are still two responses.
        if not any(resp is self.current for resp in self.responses):
            self.responses.append(self.current)


class RawClient:
    """One TCP connection to the proxy; send bytes, read parsed responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _Collector()
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def responses(
        self, count: int, *, head: bool = False, timeout: float = 5.0
    ) -> list[Response]:
        """Read until ``count`` complete responses arrived (``head``: HEAD responses)."""
        collector = self._collector
        collector.head_only = head

        async def read() -> None:
            while len(collector.responses) < count:
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    if collector.current.status and not any(
                        r is collector.current for r in collector.responses
                    ):
                        collector.responses.append(collector.current)  # close-delimited body
                    break
                collector.parser.feed_data(data)

        await asyncio.wait_for(read(), timeout)
        got, collector.responses = collector.responses[:count], collector.responses[count:]
        return got

    async def response(self, **kwargs: object) -> Response:
        (resp,) = await self.responses(1, **kwargs)  # type: ignore[arg-type]
        return resp

    async def read_until_closed(self, timeout: float = 5.0) -> bytes:
        """Everything left until the proxy closes the connection."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def is_closed(self, timeout: float = 5.0) -> bool:
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def request(port: int, data: bytes, **kwargs: object) -> Response:
    client = await RawClient.connect(port)
    try:
        await client.send(data)
        return await client.response(**kwargs)
    finally:
        await client.close()
