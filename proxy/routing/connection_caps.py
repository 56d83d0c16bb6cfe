"""How many client connections one worker holds: in all, and per client address.

Without a cap one client could open connections until the process ran out of descriptors,
and then every new client (and every backend connection) failed. The defaults are sized
from the descriptor limit (``default_caps``): each client connection may hold a backend
connection too, and ``FD_RESERVE`` descriptors stay for the admin API, health probes,
DNS, Redis and the log. Past a cap a new connection gets 503 and is closed. Pure policy.
"""

from __future__ import annotations

import resource

# Descriptors kept out of the client share: listening sockets, the admin API and its
# clients, health probes, DNS lookups, Redis, the log, files of the state directory.
FD_RESERVE = 128


def open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def default_caps(total: int | None, per_client: int | None, fd_limit: int) -> tuple[int, int]:
    """The caps to apply: the configured ones, else half of what the descriptors left
    after the reserve allow (a client connection and its backend connection each), and
    for one address half of that (one address cannot take every connection)."""
    if total is None:
        total = max(16, (fd_limit - FD_RESERVE) // 2)
    if per_client is None:
        per_client = max(1, total // 2)
    return total, min(per_client, total)


class ConnectionCaps:
    """Counts open client connections in all and by address; ``admit`` refuses past a cap.
    Entries for addresses leave when their last connection closes: the table never holds
    more addresses than connections."""

    __slots__ = ("by_client", "open", "per_client", "total")

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self.by_client: dict[str, int] = {}

    def admit(self, client: str) -> bool:
        held = self.by_client.get(client, 0)
        if self.open >= self.total or held >= self.per_client:
            return False
        self.open += 1
        self.by_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self.by_client.get(client, 0)
        if held <= 1:
            self.by_client.pop(client, None)
        else:
            self.by_client[client] = held - 1
        self.open = max(0, self.open - 1)


class ClientSlots:
    """Requests of each client address that hold a request slot or wait in the queue;
    ``take`` refuses past the cap. Entries leave at zero, as in ``ConnectionCaps``."""

    __slots__ = ("by_client", "cap")

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.by_client: dict[str, int] = {}

    def take(self, client: str) -> bool:
        held = self.by_client.get(client, 0)
        if self.cap is not None and held >= self.cap:
            return False
        self.by_client[client] = held + 1
        return True

    def give(self, client: str) -> None:
        held = self.by_client.get(client, 0)
        if held <= 1:
            self.by_client.pop(client, None)
        else:
            self.by_client[client] = held - 1
