"""The ``allowed_hosts`` setting: the syntax of a Host pattern, and the default per listener.

The policy that applies the patterns to requests is ``proxy/routing/host_check.py``.
"""

from __future__ import annotations

import ipaddress
import re

from mcplb.proxy.config.checks import accepts

# The names a loopback listener answers to when ``allowed_hosts`` is not set.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

_NAME_RE = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


@accepts({"type": "string", "pattern": "\\S"})
def check_host_pattern(value: object) -> str:
    """A config entry: a host name, ``*.domain``, an IP address (IPv6 in brackets), or
    ``*`` for any host. Ports are not part of a pattern: they are ignored when matching."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError('must be a host name, "*.domain", an IP address or "*"')
    text = value.strip().lower()
    if text == "*":
        return text
    if text.startswith("["):
        try:
            ipaddress.IPv6Address(text.strip("[]"))
        except ValueError:
            raise ValueError(f'"{value}" is not an IPv6 address in brackets') from None
        return text
    if ":" in text:
        raise ValueError(f'"{value}": give the host without a port (ports are ignored)')
    if not _NAME_RE.fullmatch(text):
        raise ValueError(f'"{value}" is not a host name, "*.domain" or IP address')
    return text


def default_allowed_hosts(listen_host: str) -> tuple[str, ...]:
    """Loopback names for a loopback listener; any host for a listener bound elsewhere."""
    try:
        loopback = ipaddress.ip_address(listen_host.strip("[]")).is_loopback
    except ValueError:
        loopback = listen_host == "localhost"
    return LOOPBACK_NAMES if loopback else ("*",)
