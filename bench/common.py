"""Helpers shared by the benchmark scripts (stdlib only; see also bench/http_bench.py).

- ``table``: a plain-text table, first column left-aligned, the others right-aligned.
- ``interruptible``: run a coroutine so that SIGINT/SIGTERM/SIGHUP cancel it (its cleanup
  runs) instead of raising KeyboardInterrupt at an arbitrary await.
- ``wait_http``: bounded wait until a started server answers ``GET path`` with 200.
- ``group_pids`` / ``vm_rss_kib`` / ``group_rss``: the processes of a process group (a master
  started with ``start_new_session=True`` and the workers it forks) and their resident memory,
  from /proc (Linux).
- ``pin_proxies``: proxies on one CPU, backends and the in-process load generator on the
  others, so that runs compare like with like.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

SignalHandler = Callable[[int, FrameType | None], Any]


class NotReady(Exception):
    """A server did not come up (or died before answering)."""


# --------------------------------------------------------------------------- output


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    all_rows = [list(head), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in all_rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- signals


async def interruptible(
    job: Coroutine[Any, Any, Any], restore: SignalHandler | None = None
) -> bool:
    """Run ``job``; SIGINT/SIGTERM/SIGHUP cancel it (its cleanup runs). True if interrupted.

    A KeyboardInterrupt raised from a plain signal handler could land inside a library's
    ``except`` and be lost, so inside the event loop signals go through here. Afterwards the
    signals get ``restore`` (when given) as their plain handler again.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(job)
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        await task
    except asyncio.CancelledError:
        if not interrupted:
            raise
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
            if restore is not None:
                signal.signal(sig, restore)
    return interrupted


# --------------------------------------------------------------------------- processes


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def http_status(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1:port over a fresh connection: (status, start of the body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace")
    finally:
        conn.close()


def wait_http(
    proc: subprocess.Popen[bytes], port: int, path: str, timeout: float, log: Path
) -> None:
    """Bounded wait until ``GET path`` answers 200; NotReady if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "port never accepted a connection"
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise NotReady(f"exited with status {rc} before becoming ready\n{tail(log)}")
        try:
            status, body = http_status(port, path, timeout=1.0)
            if status == 200:
                return
            last = f"GET {path} answered {status}: {body.strip()[:200]}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"GET {path} failed: {exc!r}"
        time.sleep(0.1)
    raise NotReady(f"not ready after {timeout:.0f}s ({last})\n{tail(log)}")


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from /proc/*/stat."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return sorted(found)


def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def group_rss(pgid: int) -> dict[int, int]:
    """pid -> VmRSS KiB of every live process of the group."""
    sizes = {pid: vm_rss_kib(pid) for pid in group_pids(pgid)}
    return {pid: kib for pid, kib in sizes.items() if kib is not None}


def pin_proxies(proxies: Sequence[int], others: Sequence[int]) -> set[int]:
    """Proxies (pids) on the last CPU, ``others`` and this process on the rest (Linux).

    Returns this process's affinity before, to give back with ``os.sched_setaffinity``.
    Unpinned, where the scheduler puts four busy processes on two cores changes from run
    to run, and with it the cost of every wake-up and each proxy's CPU per request; pinned,
    each proxy also gets one core, as in the comparisons with HAProxy (``nbthread 1``).
    """
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    if len(cpus) < 2:
        return before
    for pid in proxies:
        os.sched_setaffinity(pid, cpus[-1:])
    for pid in [*others, 0]:
        os.sched_setaffinity(pid, cpus[:-1])
    return before
