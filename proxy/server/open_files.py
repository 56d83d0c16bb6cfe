"""The open-file limit: raised to the hard limit at start, as HAProxy (from ``maxconn``) and
nginx (``worker_rlimit_nofile``) do, and what it allows said in the log and by ``check``.

Every relayed connection holds two descriptors, the client's and its backend's, so the
common soft limit of 1,024 stops a worker at about 500 concurrent connections (event
streams are long: 10,000 of them need 20,000) while the hard limit is usually far higher.
Only root may raise the hard limit itself (systemd ``LimitNOFILE``, ``ulimit -Hn``, the
container runtime's ``--ulimit nofile``)."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mcplb")

# Descriptors a worker holds besides relayed connections: listener, admin API, logs, the
# event loop's own, health probes, Redis, the state directory's files.
RESERVED = 100
# With an unlimited hard limit the kernel's ceiling for one process applies (setrlimit
# refuses RLIM_INFINITY for RLIMIT_NOFILE); this when it cannot be read.
NR_OPEN_DEFAULT = 1_048_576


@dataclass(frozen=True, slots=True)
class OpenFiles:
    before: int  # the soft limit mcplb was started with
    limit: int  # the soft limit it runs with

    @property
    def connections(self) -> int:
        """Concurrent relayed connections one worker can hold with ``limit`` descriptors."""
        return max(0, (self.limit - RESERVED) // 2)

    def describe(self, workers: int) -> str:
        raised = (
            f"raised from {self.before} to {self.limit}"
            if self.limit > self.before
            else f"{self.limit}"
        )
        total = "" if workers <= 1 else f", {workers * self.connections:,} for {workers} workers"
        return (
            f"open files {raised}: about {self.connections:,} concurrent connections "
            f"per worker (two descriptors each){total}"
        )


def hard_limit() -> int:
    """The highest soft limit this process may set: the hard limit, or with none the
    kernel's per-process ceiling."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return NR_OPEN_DEFAULT


def raise_open_files() -> OpenFiles:
    """Raise the soft RLIMIT_NOFILE to the hard limit (never lower it); the workers a
    supervisor forks inherit it. A refusal leaves the limit as it was, with a warning."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    wanted = hard_limit()
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return OpenFiles(soft, soft)
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
    except (ValueError, OSError) as exc:
        log.warning("open files: cannot raise the soft limit %d to %d: %s", soft, wanted, exc)
        return OpenFiles(soft, soft)
    return OpenFiles(soft, wanted)
