"""The access log: one line per request, formatted in place and written in batches.

Through ``logging`` a line cost about 36 µs (a LogRecord, ``findCaller``, a handler lock,
``strftime`` and one ``write(2)`` per request), half of the proxy's throughput. Here a line
is one f-string, its timestamp is formatted once per second, and lines wait in a buffer that
goes out with one ``os.write`` per 64 KiB or per 100 ms, whichever comes first.

No line is lost on a clean exit: the server flushes at shutdown (SIGTERM/SIGINT), on
SIGHUP, and in a ``finally`` around the worker's event loop, so an exception escaping the
loop still writes what was buffered; ``atexit`` covers anything else that exits the
interpreter. Only a SIGKILL loses lines (at most the last 100 ms).

A process that never calls :func:`install` (the proxy embedded in another program, the
in-process tests) gets its lines through the ``mcplb.access`` logger as before.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import select
import stat
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str

from mcplb.proxy.config.schema import LogConfig
from mcplb.proxy.observability import tracing

log = logging.getLogger("mcplb")
logger = logging.getLogger("mcplb.access")

FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 0.1
# Several workers share stdout: a write to a pipe is atomic only up to PIPE_BUF bytes, so
# towards a pipe or socket a batch goes out in pieces of whole lines no larger than that.
PIPE_BUF = select.PIPE_BUF


class _Clock:
    """The two timestamp formats, computed again only when the second changes."""

    __slots__ = ("iso", "second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""  # 03/Dec/2026:08:00:11 +0000 (combined log format)
        self.iso = ""  # 2026-12-03T08:00:11+0000 (json)

    def tick(self) -> None:
        second = int(time.time())
        if second != self.second:
            self.second = second
            now = time.localtime(second)
            self.text = time.strftime("%d/%b/%Y:%H:%M:%S %z", now)
            self.iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", now)


_clock = _Clock()

# nginx's escape=default: '"', '\\' and bytes below 32 or above 126 as \xHH, so that a
# client's bytes can neither end a quoted field, start a line, forge "key=value" fields
# after one (spaces stay: the request line has them) nor reach a terminal as controls.
_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(32), ord('"'), ord("\\"), *range(127, 256))}


def escape(text: str) -> str:
    """``text`` as nginx's ``escape=default`` writes it (characters past U+00FF as the
    \\xHH of their UTF-8 bytes)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text  # nearly every field: no copy
    if any(ord(c) > 255 for c in text):
        text = text.encode("utf-8", "surrogateescape").decode("latin-1")
    return text.translate(_ESCAPES)


class BufferedWriter:
    """Lines for one file descriptor, written by size, by time, and when asked."""

    def __init__(
        self, fd: int, flush_bytes: int = FLUSH_BYTES, flush_seconds: float = FLUSH_SECONDS
    ) -> None:
        self.fd = fd
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self.lines: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        mode = os.fstat(fd).st_mode
        self.piece = PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0
        self.failed = False

    def append(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size >= self.flush_bytes:
            self.flush()
        elif self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop to come back later: write now
                self.flush()
                return
            self.timer = loop.call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines:
            return
        lines, self.lines, self.size = self.lines, [], 0
        lines.append("")  # the last line's newline
        data = "\n".join(lines).encode("utf-8", "backslashreplace")
        try:
            if self.piece and len(data) > self.piece:
                for piece in _whole_lines(data, self.piece):
                    self._write(piece)
            else:
                self._write(data)
        except OSError as exc:
            if not self.failed:  # say it once, not once per batch
                self.failed = True
                log.error("access log: cannot write to fd %d: %s (lines dropped)", self.fd, exc)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # stdout left non-blocking by whoever started us
                select.select([], [self.fd], [], 1.0)
                continue
            view = view[written:]


def _whole_lines(data: bytes, limit: int) -> list[bytes]:
    """``data`` cut after newlines into pieces of at most ``limit`` bytes (a longer line
    is a piece of its own)."""
    pieces = []
    start, end = 0, len(data)
    while start < end:
        stop = start + limit
        if stop >= end:
            cut = end
        else:
            cut = data.rfind(b"\n", start, stop) + 1
            if cut <= start:
                cut = data.find(b"\n", stop) + 1 or end
        pieces.append(data[start:cut])
        start = cut
    return pieces


_writer: BufferedWriter | None = None


def install(fd: int) -> BufferedWriter:
    """Send this process's access lines to ``fd`` through a buffer (a proxy process)."""
    global _writer
    flush()
    _writer = BufferedWriter(fd)
    return _writer


def flush() -> None:
    """Write out every buffered line now (shutdown, SIGHUP, exit)."""
    if _writer is not None:
        _writer.flush()


atexit.register(flush)


class AccessLog:
    """What is recorded of each request when it ends: its line, formatted in the configured
    format and handed to ``out`` (None: access lines off), and, with ``tracer``, its span
    (``tracing.Trace.end``, called by the relay's ``Peer.log`` beside the line)."""

    __slots__ = ("json", "out", "tracer")

    def __init__(
        self,
        json_format: bool,
        out: Callable[[str], None] | None,
        tracer: tracing.Tracer | None = None,
    ) -> None:
        self.json = json_format
        self.out = out
        self.tracer = tracer

    def request(
        self,
        client: str,
        method: str,
        target: str,
        version: str,
        status: int,
        backend: str,
        duration: float,
        bytes_in: int,
        bytes_out: int,
        session: str,
        request_id: str,
        client_left: bool,
    ) -> None:
        """``status`` 499: the client left before an answer began (as nginx logs it);
        ``client_left``: it left before the answer was complete (any status). The
        duration is written in seconds with six decimals (a float's shortest repr after
        rounding cost three times as much, and gave 1e-05)."""
        out = self.out
        if out is None:
            return
        _clock.tick()
        # Formatted on its own: an f-string with a format spec is compiled (mypyc) into a
        # str.format call that parses the whole template on every line.
        seconds = format(duration, ".6f")
        if self.json:
            # The same text json.dumps gives for the dict of these keys, built directly.
            line = (
                f'{{"time": "{_clock.iso}", "client": {_json_str(client)}, '
                f'"method": {_json_str(method)}, "path": {_json_str(target)}, '
                f'"status": {status}, "backend": {_json_str(backend)}, '
                f'"duration": {seconds}, "bytes_in": {bytes_in}, '
                f'"bytes_out": {bytes_out}, "session": "{session}", '
                f'"request_id": {_json_str(request_id)}, '
                f'"client_left": {"true" if client_left else "false"}}}'
            )
        else:
            line = (
                f"{client} - - [{_clock.text}] "
                f'"{escape(method)} {escape(target)} HTTP/{version}" {status} '
                f"{bytes_out} backend={backend} duration={seconds} "
                f"session={session} request_id={escape(request_id)}"
            )
            if client_left:
                line += " client_left=1"
        out(line)


def for_config(config: LogConfig) -> AccessLog | None:
    """What this connection records of its requests: where its access lines go, and this
    process's tracer (``tracing.install``); None when neither is on."""
    tracer = tracing.current()
    json_format = config.format == "json"
    out: Callable[[str], None] | None = None
    if config.access:
        if _writer is not None:
            out = _writer.append
        elif logger.isEnabledFor(logging.INFO):
            out = logger.info
    if out is None and tracer is None:
        return None
    return AccessLog(json_format, out, tracer)


def close() -> None:
    """Flush and go back to the logger (tests that install a writer clean up with this)."""
    global _writer
    flush()
    _writer = None
