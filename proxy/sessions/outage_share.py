"""Session bindings that the workers of one host hand each other while Redis is down.

A client's connections spread over the workers (SO_REUSEPORT), so a binding known to one
worker alone answers 404 on the others. While its Redis is unreachable, each worker of a
``sticky.store: redis`` proxy writes the bindings it makes or uses to small files in the
supervisor's state directory, and looks there when its own table misses. Only outages
use it; Redis stays the one shared table otherwise, and the supervisor removes the
directory when it stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

MAX_NAME = 64  # a backend name is at most 64 characters (config)


class OutageShare:
    """One file per session: its name a hash of the id, its content the backend's name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, session_id: str) -> Path:
        return self.directory / hashlib.sha256(session_id.encode()).hexdigest()[:40]

    def put(self, session_id: str, backend: str) -> None:
        path = self._path(session_id)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):  # a full disk must not fail the request
            tmp.write_text(backend)
            os.replace(tmp, path)

    def get(self, session_id: str) -> str | None:
        try:
            backend = self._path(session_id).read_text()[: MAX_NAME + 1]
        except (OSError, ValueError):
            return None
        return backend if 0 < len(backend) <= MAX_NAME else None

    def drop(self, session_id: str) -> None:
        with contextlib.suppress(OSError):
            self._path(session_id).unlink()
