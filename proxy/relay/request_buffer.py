"""Request buffering before routing (``limits.request_buffer``; issue 29, N3): the one
place that decides whether a request's body is read before the request is routed and
takes a slot, and when enough of it was read.

A slot taken when the head completes can be pinned by a client that then trickles its
body (or sends part of it and stops): nginx reads the body first by default for this
reason. A request with a body of at most ``request_buffer`` bytes (64 KiB by default) is
routed once it is whole; a longer one once that many bytes arrived, the rest streamed as
today (judged by ``timeouts.body`` and the sliding-window ``limits.min_body_rate``). While
BUFFERING, the bytes stay on ``Request.body`` (``Exchange.forward_body`` keeps them);
``start_when_read`` routes the request and pauses reading when it was routed before its
body ended. The client connection calls ``begin`` when a head is complete and
``body_read`` after every piece of body.
"""

from __future__ import annotations

from mcplb.proxy.config.schema import LimitsConfig
from mcplb.proxy.relay import route
from mcplb.proxy.relay.client_side import ClientSide
from mcplb.proxy.relay.exchange import Exchange
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.states import BUFFERING, PAUSE_BUFFER_FULL


def begin(client: ClientSide, ex: Exchange, request: Request, limits: LimitsConfig) -> None:
    """A request whose head is read, to be answered next: BUFFERING until its body is read
    (``buffers_first``), else routed now."""
    if buffers_first(request, limits):
        request.buffering = True
        client.set_state(BUFFERING)
    else:
        route.start(ex, request)


def body_read(client: ClientSide, ex: Exchange, request: Request, limits: LimitsConfig) -> None:
    """More of ``request``'s body was read (or all of it): route a BUFFERING request that
    ``read_enough``. Reading the rest waits until a backend connection takes what was
    read."""
    if request.buffering and read_enough(request, limits):
        request.buffering = False
        if not request.complete:
            client.pause_reading(PAUSE_BUFFER_FULL)  # resumed when the body is sent on
        route.start(ex, request)


def buffers_first(request: Request, limits: LimitsConfig) -> bool:
    """Whether ``request``'s body is read (up to ``limits.request_buffer``) before the
    request is routed: a slow upload then holds no slot while it trickles in."""
    if request.upgrade or not limits.request_buffer:
        return False
    length = request.content_length
    if length is None:
        if not request.chunked:
            return False
    elif length == 0 or (limits.max_body_bytes and length > limits.max_body_bytes):
        return False  # nothing to read, or answered 413 at once
    # Expect: 100-continue: the client waits for the backend's 100 before the body.
    return not any(name == b"expect" for name, _ in request.headers)


def read_enough(request: Request, limits: LimitsConfig) -> bool:
    """Whether a BUFFERING request may be routed now: its body ended, or
    ``request_buffer`` bytes of it are kept."""
    return request.complete or request.buffered >= limits.request_buffer
