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
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 10.0  # SIGTERM -> exit
KILL_TIMEOUT = 5.0  # SIGKILL -> reaped
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


# --------------------------------------------------------------------------- processes


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all sockets held until every port is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def spawn(
    cmd: list[str], log_path: Path, procs: list[subprocess.Popen[bytes]], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start cmd in its own session (so Ctrl-C reaches only us), output to log_path."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    procs.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[Any], term_timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM, wait (bounded), then SIGKILL the whole process group. Returns what happened."""
    how = "already exited"
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(term_timeout)
            how = "terminated"
        except subprocess.TimeoutExpired:
            how = f"killed (no exit {term_timeout:.0f}s after SIGTERM)"
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                how = "unkillable (still running after SIGKILL)"
    # Leftover children of a master process (workers) share its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return how


def mcplb_python() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable
