"""Which ``Host`` values a listener serves: the proxy's DNS-rebinding protection.

MCP servers on loopback refuse a ``Host`` that is not a loopback name, so that a web page
whose domain was re-pointed at 127.0.0.1 cannot call them from a browser. A proxy that sends
the backend its own ``host:port`` (``preserve_host: false``) hides the attacker's name from
that check, so the proxy makes it itself, before anything reaches a backend. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence


def host_name(host: bytes) -> bytes:
    """The name part of a ``Host`` value, lower-cased, without the port; ``b""`` when the
    value is not ``name``, ``name:port`` or ``[v6]``/``[v6]:port`` with a port of digits
    (``localhost:evil.example``, ``[::1]evil.example`` and ``localhost:`` name nothing)."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            return b""
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, colon, port = host.partition(b":")
        rest = colon + port
    if rest and not (rest[:1] == b":" and 1 < len(rest) <= 6 and rest[1:].isdigit()):
        return b""
    return name


class HostPolicy:
    """Answers whether a request's ``Host`` is one this listener serves."""

    __slots__ = ("any", "exact", "last_allowed", "suffixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.any = "*" in patterns
        self.exact = frozenset(p.encode() for p in patterns if not p.startswith("*"))
        # "*.example.com" matches "a.example.com" and "a.b.example.com", not "example.com".
        self.suffixes = tuple(p[1:].encode() for p in patterns if p.startswith("*."))
        # The last Host value allowed, as sent: clients repeat theirs on every request,
        # and one entry cannot grow with what clients send.
        self.last_allowed: bytes | None = None

    def allows(self, host: bytes | None) -> bool:
        if self.any:
            return True
        if host is None:
            return False  # HTTP/1.0 without Host: no name to check against
        if host == self.last_allowed:
            return True
        name = host_name(host)
        if name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes)):
            self.last_allowed = host
            return True
        return False
