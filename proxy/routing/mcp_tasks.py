"""The task a 2026-07-28 answer creates (SEP-2663), read from its JSON body or from the
final event of its SSE stream: pure functions and a bounded incremental reader, no I/O.

A server that answers ``tools/call`` with ``resultType: "task"`` holds that task's state;
"the client MUST set the Mcp-Name header ... to the value of params.taskId. This allows
transport intermediaries and load balancers to route subsequent requests for the same task
to the server instance holding its state, which is typically required for correctness."
So the relay learns ``task id -> backend`` from the creating answer, with the task's
``ttlMs`` as the binding's lifetime (bounded by configuration), and routes ``tasks/*`` by
the validated ``Mcp-Name`` (``mcp_era.validate``).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from mcplb.proxy.routing.mcp_era import MAX_VALUE, parse_message

# Largest event (or JSON body) read for a task id: a CreateTaskResult is a few hundred
# bytes; a final event larger than this is a real result, not a task handle.
MAX_EVENT: Final = 64 * 1024


class CreatedTask(NamedTuple):
    task_id: str
    ttl_ms: int | None  # the task's ttlMs: None for "unlimited" or absent


def created_task(message: Any, request_id: Any = None) -> CreatedTask | None:
    """The task a JSON-RPC response creates, or None. ``request_id``, when given, must be
    the response's id (an answer to another request creates nothing for this one)."""
    if not isinstance(message, dict) or "method" in message:
        return None
    if request_id is not None and message.get("id") != request_id:
        return None
    result = message.get("result")
    if not isinstance(result, dict) or result.get("resultType") != "task":
        return None
    task_id = result.get("taskId")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_VALUE:
        return None
    ttl = result.get("ttlMs")
    ttl_ms = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else None
    return CreatedTask(task_id, ttl_ms)


def task_from_json(body: bytes, request_id: Any = None) -> CreatedTask | None:
    """The task an ``application/json`` answer creates."""
    if len(body) > MAX_EVENT:
        return None
    return created_task(parse_message(body), request_id)


class SseLastEvent:
    """Keeps the data of the last complete event of an SSE stream fed in pieces, with
    bounded memory: the pieces of the event being read (dropped once it passes
    MAX_EVENT) and the data of the last event that ended. Comments and other fields are
    skipped; lines may end in LF, CRLF or CR (the SSE grammar)."""

    __slots__ = ("_data", "_line", "_oversized", "_pending_cr", "last")

    def __init__(self) -> None:
        self._line = bytearray()  # the line being read
        self._data: list[bytes] = []  # data lines of the event being read
        self._oversized = False
        self._pending_cr = False  # the last piece ended in CR: an LF next ends nothing more
        self.last: bytes | None = None  # data of the last complete event

    def feed(self, piece: bytes) -> None:
        start = 0
        if self._pending_cr and piece[:1] == b"\n":
            start = 1
        self._pending_cr = False
        n = len(piece)
        i = start
        while i < n:
            cr = piece.find(b"\r", i)
            lf = piece.find(b"\n", i)
            if cr < 0 and lf < 0:
                self._grow(piece[i:])
                return
            end = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
            self._grow(piece[i:end])
            self._end_line()
            i = end + 1
            if piece[end : end + 1] == b"\r":
                if i < n and piece[i : i + 1] == b"\n":
                    i += 1
                elif i == n:
                    self._pending_cr = True

    def _grow(self, part: bytes) -> None:
        if len(self._line) + len(part) > MAX_EVENT:
            self._oversized = True
            self._line.clear()
        else:
            self._line += part

    def _end_line(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        if not line:  # a blank line ends the event
            if self._data and not self._oversized:
                self.last = b"\n".join(self._data)
            self._data = []
            self._oversized = False
            return
        if line.startswith(b"data"):
            field, _, value = line.partition(b":")
            if field == b"data":
                value = value[1:] if value.startswith(b" ") else value
                if sum(map(len, self._data)) + len(value) > MAX_EVENT:
                    self._oversized = True
                    self._data = []
                elif not self._oversized:
                    self._data.append(value)


def task_from_sse(last_event: bytes | None, request_id: Any = None) -> CreatedTask | None:
    """The task the final event of an SSE answer creates (``SseLastEvent.last``)."""
    if last_event is None:
        return None
    return created_task(parse_message(last_event), request_id)
