"""Redis with Sentinel for tests: one master, one replica and three sentinels, real
processes on 127.0.0.1 free ports, started from Debian's redis-server and redis-sentinel.

``group = await start_sentinel_group()`` returns once the replica is in sync and every
sentinel sees the replica and the two other sentinels (so a failover can happen at once).
Settings, stated because the figures the failover tests report depend on them:

- replication is asynchronous (Redis's only kind): a write the master acknowledged may be
  lost if the master dies before sending it to the replica; no ``min-replicas-to-write``;
- no persistence on any server (``--save "" --appendonly no``): a restarted server is
  empty (``appendfsync`` does not apply);
- sentinels: quorum 2 of 3, ``down-after-milliseconds`` DOWN_AFTER_MS,
  ``failover-timeout`` FAILOVER_TIMEOUT_MS: a killed master is replaced within a few
  seconds, and a test waits at most SWITCH_TIMEOUT for it.

``await group.kill_master()`` SIGKILLs the master; ``await group.wait_for_new_master(old)``
waits until every sentinel names another server; ``await group.failover()`` asks for a
coordinated failover (``SENTINEL FAILOVER``: the old master lives on as a replica).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time

from tests.support.redis_server import (
    FALLBACK_BINARY,
    RedisServer,
    RedisServerMissing,
    Reply,
    find_redis_server,
    free_port,
)

SERVICE = "mcplb-test"
DOWN_AFTER_MS = 400
FAILOVER_TIMEOUT_MS = 2000
QUORUM = 2
SWITCH_TIMEOUT = 20.0  # seconds a test waits for the sentinels to agree on a new master
READY_TIMEOUT = 20.0  # seconds for the replica to sync and the sentinels to find each other
POLL = 0.05


def find_redis_sentinel() -> list[str]:
    """The command that runs a sentinel: ``redis-sentinel``, else ``redis-server --sentinel``
    (the same binary); RedisServerMissing without either."""
    found = shutil.which("redis-sentinel")
    if found is not None:
        return [found]
    if os.access("/usr/bin/redis-sentinel", os.X_OK):
        return ["/usr/bin/redis-sentinel"]
    try:
        return [find_redis_server(FALLBACK_BINARY), "--sentinel"]
    except RedisServerMissing:
        raise RedisServerMissing(
            "redis-sentinel is not installed; the Sentinel failover tests need it. `make "
            "test` installs it (apt-get install redis-sentinel)."
        ) from None


class SentinelProcess(RedisServer):
    """One sentinel watching SERVICE, its config file in its own directory (a sentinel
    rewrites it)."""

    def __init__(
        self,
        command: list[str],
        port: int,
        master_port: int,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        """``password``: the servers' (``auth-pass``); ``sentinel_password``: this
        sentinel's own (``requirepass``)."""
        super().__init__(command[0], port)
        self.command_prefix = command
        self.password = sentinel_password
        self.config = self.dir / "sentinel.conf"
        auth = f"sentinel auth-pass {SERVICE} {password}\n" if password else ""
        if sentinel_password:
            auth += f"requirepass {sentinel_password}\n"
        self.config.write_text(
            f"port {port}\n"
            f"bind {self.host}\n"
            "daemonize no\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {SERVICE} {self.host} {master_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n" + auth
        )

    def argv(self) -> list[str]:
        return [*self.command_prefix, str(self.config)]

    async def master_address(self) -> tuple[str, int] | None:
        reply = await self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        host, port = reply
        return str(host), int(str(port))

    async def master_state(self) -> dict[str, str]:
        reply = await self.command("SENTINEL", "MASTER", SERVICE)
        return _pairs(reply)


def _pairs(reply: Reply) -> dict[str, str]:
    if not isinstance(reply, list):
        return {}
    items = [str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


class SentinelGroup:
    """A master, a replica and three sentinels; ``servers`` by port (the roles change)."""

    def __init__(self, servers: list[RedisServer], sentinels: list[SentinelProcess]) -> None:
        self.servers = {server.port: server for server in servers}
        self.sentinels = sentinels
        self.master_port = servers[0].port

    @property
    def addresses(self) -> list[str]:
        """The sentinels as ``sticky.redis.sentinels`` takes them."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    @property
    def master(self) -> RedisServer:
        return self.servers[self.master_port]

    async def wait_ready(self) -> None:
        """Until the replica is in sync and each sentinel sees it and the two others."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            states = [await s.master_state() for s in self.sentinels]
            if (
                all(
                    state.get("num-slaves") == "1"
                    and state.get("num-other-sentinels") == str(len(self.sentinels) - 1)
                    and "s_down" not in state.get("flags", "")
                    for state in states
                )
                and await self._replica_in_sync()
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinel group is not ready: {states}")
            await asyncio.sleep(POLL)

    async def _replica_in_sync(self) -> bool:
        for port, server in self.servers.items():
            if port == self.master_port or not server.alive:
                continue
            info = str(await server.command("INFO", "replication"))
            if "master_link_status:up" not in info:
                return False
        return True

    async def kill_master(self) -> RedisServer:
        """SIGKILL the master; returns it (dead)."""
        master = self.master
        await master.kill()
        return master

    async def failover(self) -> None:
        """A coordinated failover: the replica is promoted, the master becomes its replica."""
        reply = await self.sentinels[0].command("SENTINEL", "FAILOVER", SERVICE)
        if reply != "OK":
            raise RuntimeError(f"SENTINEL FAILOVER answered {reply!r}")

    async def wait_for_new_master(self, old_port: int) -> int:
        """Until every sentinel names a master other than ``old_port`` (and that server says
        it is a master); returns its port."""
        deadline = time.monotonic() + SWITCH_TIMEOUT
        while True:
            addresses = {await s.master_address() for s in self.sentinels}
            if len(addresses) == 1:
                (address,) = addresses
                if address is not None and address[1] != old_port:
                    server = self.servers[address[1]]
                    if "role:master" in str(await server.command("INFO", "replication")):
                        self.master_port = address[1]
                        return address[1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new master after {SWITCH_TIMEOUT} s: {addresses}")
            await asyncio.sleep(POLL)

    async def stop(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            await process.stop()


async def start_sentinel_group(
    password: str | None = None, sentinel_password: str | None = None
) -> SentinelGroup:
    """A master, its replica and three sentinels, ready for a failover; ``password``
    guards the servers (``requirepass``, ``masterauth``), ``sentinel_password`` the
    sentinels."""
    auth = ("--requirepass", password, "--masterauth", password) if password else ()
    sentinel_command = find_redis_sentinel()
    binary = find_redis_server()
    started: list[RedisServer] = []
    try:
        master = RedisServer(binary, free_port(), auth)
        master.password = password
        started.append(master)
        await master.start()
        replica_of = ("--replicaof", master.host, str(master.port))
        replica = RedisServer(binary, free_port(), (*auth, *replica_of))
        replica.password = password
        started.append(replica)
        await replica.start()
        sentinels = []
        for _ in range(3):
            sentinel = SentinelProcess(
                sentinel_command, free_port(), master.port, password, sentinel_password
            )
            started.append(sentinel)
            await sentinel.start()
            sentinels.append(sentinel)
        group = SentinelGroup([master, replica], sentinels)
        await group.wait_ready()
        return group
    except BaseException:
        for process in started:
            await process.stop()
        raise
