"""Task bindings shared by the workers of one host, for ``sticky.store: signed``.

Signed mode keeps no table for sessions: the id carries its backend. A task id cannot be
sealed that way without rewriting bodies both ways (the id is minted inside an answer body,
JSON or an SSE event, and comes back in request bodies and in ``Mcp-Name``; see
docs/interop.md, "Tasks"), so task bindings need a table. With one worker it is that
worker's memory; with several, a client's connections spread over the workers
(SO_REUSEPORT), and a binding one worker learned must be found by the others. They share it
through small files in the supervisor's state directory (as ``OutageShare`` does for Redis
outages): one per task binding, named by a hash of its key, holding the backend's name and
the binding's expiry (wall clock, the same for every worker of the host).

Costs: a file written when a task is created (rare next to its polls); a file read only
when this worker's table misses (then the binding is kept in its table). Bounds: each
worker removes the files it wrote when they expire (``expire``, on the sweep) and past its
table's size cap (the oldest first); the supervisor removes the directory when it stops.
Across replicas nothing is shared: use ``store: redis`` there (``mcplb check`` says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from mcplb.proxy.sessions.store import MemorySessionStore, SessionStore

MAX_FILE = 128  # bytes: a backend name (at most 64 characters), a newline, a time


class HostSharedStore(SessionStore):
    """A worker's ``MemorySessionStore`` in front of the host's shared files."""

    def __init__(
        self,
        directory: Path,
        ttl: float,
        max_bindings: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ttl = ttl
        self._max = max_bindings
        self._clock = clock  # wall clock: the files' expiry is read by other processes
        self._local = MemorySessionStore(ttl, max_bindings, clock)
        # The files this worker wrote -> their expiry, in the order written.
        self._written: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._local)

    def _path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def get(self, key: str) -> str | None:
        backend = self._local.known(key)
        if backend is not None:
            return backend
        try:
            with self._path(key).open("rb") as file:
                data = file.read(MAX_FILE + 1)
        except OSError:
            return None
        name, _, expires_text = data.decode("ascii", "replace").partition("\n")
        try:
            expires = float(expires_text)
        except ValueError:
            return None
        left = expires - self._clock()
        if not name or len(data) > MAX_FILE or left <= 0:
            return None
        await self._local.bind(key, name, left)
        return name

    def known(self, key: str) -> str | None:
        return self._local.known(key)

    async def bind(self, key: str, backend: str, ttl: float | None = None) -> str | None:
        previous = await self._local.bind(key, backend, ttl)
        expires = self._clock() + (self._ttl if ttl is None else min(ttl, self._ttl))
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):  # a full disk must not fail the answer
            tmp.write_bytes(f"{backend}\n{expires:.3f}".encode("ascii", "replace"))
            os.replace(tmp, path)
            self._written.pop(path.name, None)
            self._written[path.name] = expires
            while len(self._written) > self._max:
                self._unlink(next(iter(self._written)))
        return previous

    async def forget(self, key: str) -> str | None:
        previous = await self._local.forget(key)
        self._unlink(self._path(key).name)
        return previous

    def expire(self) -> int:
        """Drop expired bindings here, and the expired files this worker wrote (those
        written one after the other expire nearly in order: a longer one may keep a
        shorter one behind it for a while, bounded by the size cap)."""
        dropped = self._local.expire()
        now = self._clock()
        written = self._written
        while written:
            name = next(iter(written))
            if written[name] > now:
                break
            self._unlink(name)
        return dropped

    def _unlink(self, name: str) -> None:
        self._written.pop(name, None)
        with contextlib.suppress(OSError):
            (self.directory / name).unlink()
