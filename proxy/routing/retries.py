"""When a failed request may be sent again (sans-IO).

A retry is safe when nothing reached a backend (the connect failed). Once the request may
have reached one, only idempotent methods are sent again, unless the config allows more:
an MCP POST could otherwise run a tool twice. How many retries a cluster takes is its
retry budget (``cluster.retry_budget``).
"""

from __future__ import annotations

from mcplb.proxy.config.schema import RetriesConfig

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def may_retry(config: RetriesConfig, condition: str, method: bytes, sent: bool) -> bool:
    """Whether ``condition`` (connect_failure, reset, or a status code) allows sending a
    ``method`` request again; ``sent``: it may have reached the backend."""
    if condition not in config.on:
        return False
    return not sent or config.non_idempotent or method in IDEMPOTENT_METHODS
