"""What an exchange sees of its client connection: a small interface (write, pause and
resume reading, finish, close), as uvicorn's request cycle sees its protocol, and the
facts of the client that do not change while it is connected (``Peer``).

``ClientConnection`` implements ``ClientSide``; the exchange and its response depend on
this module only, so none of them imports the connection (no import cycle)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Protocol

from mcplb.proxy.observability.access_log import AccessLog
from mcplb.proxy.relay.flow import FlowControl
from mcplb.proxy.relay.request import Request


class Peer:
    """The client of one connection, as the exchanges on it report and forward it."""

    __slots__ = ("access_log", "ip", "ip_bytes", "proto")

    def __init__(self, ip: str, proto: bytes, access_log: AccessLog | None) -> None:
        self.ip = ip
        self.ip_bytes = ip.encode()
        self.proto = proto  # X-Forwarded-Proto: b"http" or b"https"
        self.access_log = access_log

    @staticmethod
    def of(transport: asyncio.BaseTransport, access_log: AccessLog | None) -> Peer:
        """The client at the other end of ``transport`` (a Unix socket's: "unix")."""
        peer = transport.get_extra_info("peername")
        proto = b"http" if transport.get_extra_info("ssl_object") is None else b"https"
        return Peer(peer[0] if isinstance(peer, tuple) else "unix", proto, access_log)

    def log(
        self,
        request: Request,
        status: int,
        duration: float,
        backend: str,
        bytes_out: int,
        client_left: bool,
    ) -> None:
        """The access-log line of one of this client's requests (``backend`` "": none), and
        the end of its span."""
        access_log = self.access_log
        assert access_log is not None
        request.logged = True
        trace = request.trace
        if trace is not None:  # its span ends here (observability/tracing.py)
            trace.end(request, self.ip, self.proto, status, backend, bytes_out, client_left)
        if access_log.out is None:
            return  # tracing on, access lines off
        session = request.session_id
        # Never the raw id: it is a bearer credential for the session.
        hashed = hashlib.sha256(session.encode()).hexdigest()[:12] if session else "-"
        access_log.request(
            self.ip,
            request.method.decode("latin-1"),
            request.target.decode("latin-1"),
            request.version,
            status,
            backend or "-",
            duration,
            request.body_size,
            bytes_out,
            hashed,
            (request.request_id or b"-").decode("latin-1"),
            client_left,
        )


class ClientSide(Protocol):
    """The client connection, as the exchange under way talks to it."""

    # Inside the connection's read: writes toward the backend wait for its end, so that
    # what one read brought goes out in one write.
    feeding: bool
    # Why reading from the client is paused; whether its socket is full (reading from
    # the backend then waits).
    flow: FlowControl
    # Bytes moved (set by whoever moves them: a flag, not a call, on every read): the
    # idle timeout starts again at the sweep's next pass.
    active: bool

    def write(self, data: bytes) -> None:
        """Write toward the client (nothing once the connection is closed)."""

    def pause_reading(self, reason: int) -> None: ...

    def resume_reading(self, reason: int) -> None: ...

    def set_state(self, state: int) -> None:
        """Move to ``state`` (``states.LEGAL``); the timeout sweep restarts its clock."""

    def may_keep_alive(self) -> bool:
        """Whether the connection may stay open after this answer (not shutting down,
        and another request may come)."""

    def finish(self, request: Request, keep_alive: bool) -> None:
        """The answer to ``request`` was sent: go on with the next request, or close."""

    def close(self, linger: bool = False) -> None:
        """Close now (``linger``: after an error answer, see ``ClientConnection``)."""
