"""DNS discovery of backends (``discovery.dns``): every address a name resolves to is one.

The name is looked up every ``interval``; a changed set of addresses is handed to a
callback that applies it the way a config reload applies a changed ``backends`` list
(``ProxyServer.apply_discovered``). A failed lookup or an empty answer keeps the last known
set, logged and counted: it never empties the pool. With several workers, worker 0 looks
the name up and writes the set to the state directory; the others adopt it from there
(``read_shared``), as they adopt its active health verdicts.

DNS answers are untrusted input (anyone who controls the zone, or spoofs it, writes them):
an address is adopted only if it could be a backend elsewhere on the network
(``AddressScreen``). Loopback and link-local addresses (the machine itself, the cloud
metadata service at 169.254.169.254) are refused unless ``allow_networks`` names them;
unspecified and multicast addresses and the proxy's own listener and admin API always are.
At most ``max_backends`` addresses of one answer are adopted. A loop through another
route (a name of the proxy's own host) still ends at once: the relay refuses with 508 a
request carrying the proxy's own ``Via`` entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mcplb.proxy.config.schema import BackendConfig, DnsDiscoveryConfig
from mcplb.proxy.observability.state_dir import write_json

log = logging.getLogger("mcplb.discovery")

Address = tuple[str, int]  # (IP address, port)
SHARED_FILE = "discovery.json"  # in the supervisor's state directory
MAX_LOOKUP_SECONDS = 5.0  # one lookup (all its retries) gives up after this


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressScreen:
    """Which discovered addresses may become backends (see the module's docstring)."""

    def __init__(self, allow_networks: Iterable[str], own: Iterable[tuple[str, int, str]]) -> None:
        """``own``: the proxy's endpoints, (host, port, what): the listener, the admin API."""
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        self.own: list[tuple[IpAddress | None, int, str]] = []
        for host, port, what in own:
            try:
                ip: IpAddress | None = _ip(host)
            except ValueError:
                ip = None  # "localhost": its addresses are loopback, refused unless allowed
            self.own.append((ip, port, what))
        self._local: frozenset[IpAddress] | None = None

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is not adopted, or None."""
        host, port = address
        try:
            ip = _ip(host)
        except ValueError:
            return "not an IP address"
        for own_ip, own_port, what in self.own:
            if port == own_port and (
                ip == own_ip or ((own_ip is None or own_ip.is_unspecified) and self._is_local(ip))
            ):
                return what
        if ip.is_unspecified:
            return "an unspecified address (this host)"
        if ip.is_multicast:
            return "a multicast address"
        if any(ip in network for network in self.allowed):
            return None
        if ip.is_loopback:
            return "a loopback address"
        if ip.is_link_local:
            return "a link-local address"
        return None

    def _is_local(self, ip: IpAddress) -> bool:
        """Whether ``ip`` is this host's (what a listener on 0.0.0.0 or :: answers on)."""
        if ip.is_loopback or ip.is_unspecified:
            return True
        if self._local is None:
            found: set[IpAddress] = set()
            try:
                for info in socket.getaddrinfo(socket.gethostname(), None):
                    found.add(_ip(str(info[4][0])))
            except (OSError, ValueError):
                pass  # best effort: the Via check ends any loop left
            self._local = frozenset(found)
        return ip in self._local

    def screen(self, addresses: Iterable[Address], limit: int) -> tuple[list[Address], list[str]]:
        """The addresses to adopt (at most ``limit``, in order), and one line per address
        left out."""
        kept: list[Address] = []
        notes: list[str] = []
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                notes.append(f"{_label(address)} refused: {why}")
            elif len(kept) < limit:
                kept.append(address)
            else:
                notes.append(f"{_label(address)} left out: over discovery.dns.max_backends")
        return kept, notes


def _ip(host: str) -> IpAddress:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class DnsDiscovery:
    """Looks ``config.name`` up; remembers the last set it found and counts the outcomes."""

    def __init__(
        self,
        config: DnsDiscoveryConfig,
        counts: Counter[str] | None = None,
        screen: AddressScreen | None = None,
    ) -> None:
        """``counts``: where to count lookups by result (the runtime's stats); ``screen``:
        which addresses may be adopted (default: refuse local ones, no own endpoints)."""
        self.config = config
        self.screen = AddressScreen(config.allow_networks, ()) if screen is None else screen
        self._answer: tuple[Address, ...] = ()  # the last answer as found, before screening
        self._kept: tuple[Address, ...] = ()  # what the screen kept of it
        self.resolver = dns.asyncresolver.Resolver(configure=not config.resolvers)
        if config.resolvers:
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in config.resolvers
            ]
        # A lookup that outlived the interval would delay the next one: give up before.
        self.resolver.lifetime = min(config.interval, MAX_LOOKUP_SECONDS)
        self.addresses: tuple[Address, ...] = ()  # the last known set
        # "changed", "unchanged", "empty" (no such name or no records), "failed"
        self.counts: Counter[str] = Counter() if counts is None else counts

    async def lookup(self) -> tuple[Address, ...]:
        """The addresses and ports the name resolves to now, sorted; raises DNSException.

        A relative name goes through the resolv.conf search list (ndots), as getaddrinfo
        does: "mcp-headless" finds the Service in the pod's own Kubernetes namespace."""
        config = self.config
        if config.record != "SRV":
            assert config.port is not None  # the loader requires it for A and AAAA
            answer = await self.resolver.resolve(config.name, config.record, search=True)
            return tuple(sorted({(rdata.address, config.port) for rdata in answer}))
        found: set[Address] = set()
        for srv in await self.resolver.resolve(config.name, "SRV", search=True):
            target = srv.target.to_text()
            if target == ".":
                continue  # "the service is not available at this domain" (RFC 2782)
            found.update((address, srv.port) for address in await self._addresses(target))
        return tuple(sorted(found))

    async def _addresses(self, target: str) -> list[str]:
        """An SRV target's addresses: its A records, else its AAAA records."""
        try:
            answer = await self.resolver.resolve(target, "A", search=True)
        except dns.resolver.NoAnswer:
            answer = await self.resolver.resolve(target, "AAAA", search=True)
        return [rdata.address for rdata in answer]

    async def refresh(self) -> tuple[Address, ...] | None:
        """Look the name up once: the new set if it changed, else None (also when the
        lookup failed or found nothing: the last known set stays)."""
        name, record = self.config.name, self.config.record
        try:
            found = await self.lookup()
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            found = ()
        except (dns.exception.DNSException, OSError) as exc:
            self.counts["failed"] += 1
            log.warning(
                "discovery: looking up %s %s failed (%s); keeping the last %d backends",
                record,
                name,
                exc,
                len(self.addresses),
            )
            return None
        if found != self._answer:
            self._answer = found
            kept, notes = self.screen.screen(found, self.config.max_backends)
            for note in notes:
                log.warning("discovery: %s %s: %s", record, name, note)
            self._kept = tuple(kept)
        found = self._kept
        if not found:
            self.counts["empty"] += 1
            log.warning(
                "discovery: %s %s has no records; keeping the last %d backends",
                record,
                name,
                len(self.addresses),
            )
            return None
        if found == self.addresses:
            self.counts["unchanged"] += 1
            return None
        self.counts["changed"] += 1
        log.info(
            "discovery: %s %s resolves to %s", record, name, ", ".join(_label(a) for a in found)
        )
        self.addresses = found
        return found

    async def run(self, apply: Callable[[tuple[Address, ...]], Awaitable[None]]) -> None:
        """Look up every interval and ``apply`` each changed set, until cancelled."""
        while True:
            found = await self.refresh()
            if found is not None:
                try:
                    await apply(found)
                except Exception:  # a bug must not end discovery for the process's life
                    log.exception("discovery: applying %d backends failed", len(found))
                    self.addresses = ()  # so that the next lookup applies its set again
            await asyncio.sleep(self.config.interval)


def backend_configs(
    config: DnsDiscoveryConfig, addresses: Iterable[Address]
) -> tuple[BackendConfig, ...]:
    """One backend per address, named after it: "10.1.2.3-8000"."""
    backends = []
    for host, port in addresses:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        url = f"{config.scheme}://{authority}{config.path_prefix}"
        name = f"{host.replace(':', '_')}-{port}"  # names take no ":"
        backends.append(BackendConfig(name, url, config.scheme, host, port, config.path_prefix))
    return tuple(backends)


def merge(
    static: tuple[BackendConfig, ...], found: tuple[BackendConfig, ...]
) -> tuple[BackendConfig, ...]:
    """The static backends, then the discovered ones they do not already name or reach."""
    names = {b.name for b in static}
    endpoints = {(b.host, b.port) for b in static}
    return static + tuple(
        b for b in found if b.name not in names and (b.host, b.port) not in endpoints
    )


def write_shared(directory: Path, addresses: tuple[Address, ...]) -> None:
    write_json(directory / SHARED_FILE, [list(address) for address in addresses])


def read_shared(directory: Path) -> tuple[Address, ...] | None:
    """The set worker 0 found, or None if it has not written one (or is writing it now)."""
    try:
        data = json.loads((directory / SHARED_FILE).read_text())
        return tuple((str(host), int(port)) for host, port in data)
    except (OSError, ValueError, TypeError):
        return None


def shared_mtime(directory: Path) -> int | None:
    try:
        return (directory / SHARED_FILE).stat().st_mtime_ns
    except OSError:
        return None


def _label(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
