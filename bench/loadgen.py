"""An in-process HTTP/1.1 load generator (uvloop + httptools): closed and open loop.

- ``closed_loop``: ``connections`` keep-alive connections, each sending its next request
  when the previous answer is complete, until ``requests`` answers came back (as wrk does).
  The CPU gate uses it: it needs a fixed amount of work, not a fixed rate.
- ``open_loop``: requests are due at a fixed rate, whatever the answers do; a due request
  goes out on an idle connection, or waits for one. Latency is measured from the time the
  request was *due*, not from when it could be sent, so a stall shows in full in every
  request it delayed (no coordinated omission, as wrk2 measures). The schedule is kept by
  a timerfd (microsecond wake-ups; the event loop's own timers have millisecond
  granularity, as large as the latencies measured).

Runs on Linux (timerfd through ctypes).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

_CLOCK_MONOTONIC = 1  # time.monotonic() reads this clock on Linux
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timespec(seconds: float) -> _Timespec:
    whole = int(seconds)
    return _Timespec(whole, int((seconds - whole) * 1e9))


class Timer:
    """A periodic timerfd: first expiry at ``start`` (time.monotonic), then every
    ``interval`` seconds."""

    def __init__(self, start: float, interval: float) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        spec = _Itimerspec(_timespec(interval), _timespec(start))
        if self.libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def expirations(self) -> int:
        try:
            return int(struct.unpack("Q", os.read(self.fd, 8))[0])
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Result:
    answers: int = 0
    errors: int = 0  # answers other than 200, and connections lost mid-request
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds (open loop)
    late_sends: int = 0  # due requests that had to wait for a free connection

    def percentile(self, p: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(p / 100 * len(values)))]


class _Connection(asyncio.Protocol):
    def __init__(
        self, on_answer: Callable[[_Connection, bool], None], request: bytes = REQUEST
    ) -> None:
        self.on_answer = on_answer
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = 0.0  # when the request in flight was due
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, due: float) -> None:
        self.due = due
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.on_answer(self, self.parser.get_status_code() == 200)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _connect(
    port: int, n: int, on_answer: Callable[[_Connection, bool], None], request: bytes = REQUEST
) -> list[_Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(n):
        _, conn = await loop.create_connection(lambda: _Connection(on_answer, request), HOST, port)
        conns.append(conn)
    return conns


def _close(conns: list[_Connection]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


async def closed_loop(
    port: int, requests: int, connections: int, timeout: float, request: bytes = REQUEST
) -> Result:
    """``requests`` answers over ``connections`` connections, each one request at a time;
    each request the bytes ``request`` (a GET / by default)."""
    result = Result()
    done = asyncio.get_running_loop().create_future()
    sent = 0

    def on_answer(conn: _Connection, ok: bool) -> None:
        nonlocal sent
        result.answers += 1
        result.errors += not ok
        if sent < requests:
            sent += 1
            conn.send(0.0)
        elif result.answers == requests and not done.done():
            done.set_result(None)

    conns = await _connect(port, connections, on_answer, request)
    started = time.monotonic()
    try:
        for conn in conns[:requests]:
            sent += 1
            conn.send(0.0)
        lost = [c.lost for c in conns]
        await asyncio.wait_for(asyncio.wait([done, *lost], return_when="FIRST_COMPLETED"), timeout)
        if not done.done():
            raise ConnectionError("the server closed a connection during the run")
    finally:
        result.seconds = time.monotonic() - started
        _close(conns)
    return result


async def open_loop(
    port: int, rate: float, duration: float, connections: int, warmup: float = 1.0
) -> Result:
    """Requests due every 1/``rate`` s for ``duration`` s (after ``warmup`` s not counted);
    latency from each request's due time to its complete answer."""
    loop = asyncio.get_running_loop()
    result = Result()
    idle: deque[_Connection] = deque()
    waiting: deque[float] = deque()  # due times of requests no connection was free for
    measured_from = 0.0
    outstanding = 0
    finished = loop.create_future()
    scheduling = True

    def on_answer(conn: _Connection, ok: bool) -> None:
        nonlocal outstanding
        outstanding -= 1
        if conn.due >= measured_from:
            result.answers += 1
            result.errors += not ok
            result.latencies.append(time.monotonic() - conn.due)
        if waiting:
            outstanding += 1
            conn.send(waiting.popleft())
        else:
            idle.append(conn)
            if not scheduling and not outstanding and not finished.done():
                finished.set_result(None)

    conns = await _connect(port, connections, on_answer)
    idle.extend(conns)
    interval = 1.0 / rate
    start = time.monotonic() + 0.05
    measured_from = start + warmup
    total = int((warmup + duration) * rate)
    timer = Timer(start, interval)
    sent = 0

    def on_timer() -> None:
        nonlocal sent, outstanding, scheduling
        for _ in range(timer.expirations()):
            if sent >= total:
                break
            due = start + sent * interval
            sent += 1
            if idle:
                outstanding += 1
                idle.popleft().send(due)
            else:
                if due >= measured_from:
                    result.late_sends += 1
                waiting.append(due)
        if sent >= total and scheduling:
            scheduling = False
            loop.remove_reader(timer.fd)
            if not outstanding and not waiting and not finished.done():
                finished.set_result(None)

    loop.add_reader(timer.fd, on_timer)
    try:
        lost = [c.lost for c in conns]
        await asyncio.wait_for(
            asyncio.wait([finished, *lost], return_when="FIRST_COMPLETED"),
            warmup + duration + 30,
        )
        if not finished.done():
            raise ConnectionError("the server closed a connection during the run")
    finally:
        if scheduling:
            loop.remove_reader(timer.fd)
        timer.close()
        result.seconds = duration
        _close(conns)
    return result
