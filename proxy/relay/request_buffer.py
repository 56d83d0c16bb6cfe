"""How much of a request's body is read before the request is routed: the one place that
decides it, for every reason there is to wait (route.read_before_routing does the
waiting, once the head's checks passed: no body is held for a request not let in).

The reasons, each with its bound; a request waits until its body is complete or every
reason that applies is satisfied, so the larger bound of those that apply holds:

- ``limits.request_buffer`` (issue 29, N3; 64 KiB by default, at most 256 KiB): a slot
  taken when the head completes can be pinned by a client that then trickles its body
  (or sends part of it and stops): nginx reads the body first by default for this
  reason. A request with a body of at most ``request_buffer`` bytes is routed once it is
  whole; a longer one once that many bytes arrived (framed: chunk sizes count), the rest
  streamed (judged by ``timeouts.body`` and the sliding-window ``limits.min_body_rate``).
  Not for a request that sent ``Expect`` (the client waits for the backend's answer
  before it sends the body) or upgrades.
- A body the routing or the limits must see, kept on ``request.sniff`` up to
  ``mcp_method.SNIFF_LIMIT`` (``mcp_era.MAX_CHECKED``, 64 KiB; ``sniff`` drops to None
  past it): a 2026-07-28 POST, whose routing headers are checked against its body before
  anything is taken from them; any JSON POST when ``rate_limit.tools`` needs its tool
  name. This one also with ``Expect: 100-continue`` (the proxy sends the 100 itself).

While the body is read the bytes stay on ``Request.body`` (``Exchange.forward_body``); the
request is BUFFERING. Once routed with its body incomplete, reading pauses until a backend
connection takes what was read.
"""

from __future__ import annotations

from mcplb.proxy.config.schema import LimitsConfig
from mcplb.proxy.relay.request import Request


def buffer_bound(request: Request, limits: LimitsConfig) -> int:
    """How many body bytes ``limits.request_buffer`` has read before routing ``request``
    (0: it does not apply): a body is coming, within the size limit, from a client that
    does not wait for a 100 Continue; not an upgrade. Decided once, at the head's checks
    (the Expect field may be dropped afterwards)."""
    if request.upgrade or not limits.request_buffer:
        return 0
    length = request.content_length
    if length is None:
        if not request.chunked:
            return 0
    elif length == 0 or (limits.max_body_bytes and length > limits.max_body_bytes):
        return 0  # nothing to read, or answered 413 at once
    # Expect: 100-continue: the client waits for the backend's 100 before the body.
    if any(name == b"expect" for name, _ in request.headers):
        return 0
    return limits.request_buffer


def reads_first(request: Request, bound: int, tools: bool) -> bool:
    """Whether ``request``'s body is read (some of it, see the module) before it is
    routed; ``bound``: ``buffer_bound``'s; ``tools``: per-tool rate rules are configured."""
    if request.complete:
        return False  # read already (a request pipelined behind another, a bodiless one)
    return bound > 0 or _judged(request, tools)


def read_enough(request: Request, bound: int, tools: bool) -> bool:
    """Whether a request whose body is being read may be routed now: its body ended, or
    every reason it waited for is satisfied (the body past the sniff bound, and ``bound``
    bytes of it kept)."""
    if request.complete:
        return True
    if _judged(request, tools):
        return False  # still within SNIFF_LIMIT: complete, or past it, decides
    return request.buffered >= bound


def _judged(request: Request, tools: bool) -> bool:
    """Whether the body, kept until complete or past SNIFF_LIMIT, is to be judged before
    routing: a 2026-07-28 POST's, or any kept one when tool rules need its tool name."""
    return request.sniff is not None and (request.mcp is not None or tools)
