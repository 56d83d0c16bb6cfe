"""Who the client is behind trusted proxies: the first untrusted X-Forwarded-For hop,
read right to left (sans-IO; used by ip_hash and by rate limiting)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

TRUST_CACHE = 4096  # parsed addresses kept; cleared when full

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[Any]) -> tuple[Network, ...]:
    """CIDR strings as networks; raises ValueError naming the index of a bad one (an
    entry of any type: they come from the config as they are)."""
    networks = []
    for index, entry in enumerate(entries):
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"[{index}]: {entry!r} is not a valid network") from None
    return tuple(networks)


class ForwardedClient:
    """The client address of a request whose socket peer may be a trusted proxy."""

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self.trusted = trusted
        self._addresses: dict[str, tuple[str, bool]] = {}  # text -> (canonical, trusted)

    def client(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """``peer`` itself unless it is trusted; then the first untrusted hop of
        X-Forwarded-For from the right (the leftmost if every hop is trusted)."""
        client, trusted = self._address(peer)
        if not trusted:
            return peer  # as without trusted proxies: turning them on moves no direct client
        # Every X-Forwarded-For field, in order, is one comma-separated list of hops.
        hops: list[bytes] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                hops.extend(value.split(b","))
        for hop in reversed(hops):
            text = hop.strip().decode("latin-1")
            if not text:
                continue
            client, trusted = self._address(text)
            if not trusted:
                return client
        return client

    def trusts(self, peer: str) -> bool:
        """Whether the socket peer is a trusted proxy (its forwarding headers go on)."""
        return self._address(peer)[1]

    def _address(self, text: str) -> tuple[str, bool]:
        """``text``'s canonical form (port stripped, IPv4-mapped IPv6 as IPv4) and whether
        it lies in a trusted network; text that is not an address is kept and untrusted."""
        found = self._addresses.get(text)
        if found is not None:
            return found
        try:
            ip = ipaddress.ip_address(_strip_port(text))
        except ValueError:
            found = (text, False)
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found = (str(ip), any(ip in network for network in self.trusted))
        if len(self._addresses) >= TRUST_CACHE:
            self._addresses.clear()
        self._addresses[text] = found
        return found


def _strip_port(text: str) -> str:
    """``[v6]:port`` -> ``v6`` and ``v4:port`` -> ``v4``; anything else unchanged."""
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text
