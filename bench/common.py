"""Helpers shared by the benchmark scripts (stdlib only): one place for each of them.

- output: ``table`` (plain-text columns), ``log_step`` (progress on stderr), ``one_line``;
  ``add_run_options`` (--start-timeout, --json, --keep-tmp).
- signals: ``catch_signals`` / ``raise_interrupt`` (SIGINT/SIGTERM/SIGHUP raise
  KeyboardInterrupt, also when started with SIGINT ignored), ``interruptible`` (the same
  inside an event loop: the signals cancel a coroutine, whose cleanup runs).
- processes: ``spawn`` (own session, output to a log), ``stop_process`` (SIGTERM, bounded
  wait, SIGKILL of the group), ``retire`` (stop one of ``procs`` and drop it from the list),
  ``stop_all`` and ``drop_tmp`` (the cleanup at the end of a run), ``tail`` (of a log).
- ports and readiness: ``free_ports``, ``wait_until`` (bounded poll of a started server),
  ``wait_http`` (``GET path`` answers 200), ``wait_port`` (the port accepts connections).
- /proc (Linux): ``group_pids`` / ``vm_rss_kib`` / ``group_rss`` (the processes of a process
  group: a master started with ``start_new_session=True`` and the workers it forks, and their
  resident memory), ``cpu_seconds`` (one process) and ``group_cpu_seconds`` (process groups),
  ``pin_proxies`` (proxies on one CPU, backends and the load generator on the others).
- wrk: ``run_wrk`` (bounded) and ``parse_wrk_output`` into a ``WrkResult``.
- configs: ``mcplb_config`` (YAML text), ``mcplb_cmd``, ``nginx_conf`` / ``nginx_cmd`` /
  ``nginx_backend``, ``haproxy_conf``.
- the machine: ``machine_info`` (CPUs, kernel, load, tool versions), ``first_line``,
  ``package_version``.
- the build measured: ``pin_mcplb_import`` (run at import: every mcplb started imports the
  package this process imports, PYTHONPATH=build/compiled included), ``mcplb_version``,
  ``logged_version`` (the line a started ``mcplb run`` logged), ``checked_build`` (refuses a
  pure process where the compiled build was asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import importlib.machinery
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 10.0  # SIGTERM -> exit
KILL_TIMEOUT = 5.0  # SIGKILL -> reaped
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WRK_SLACK = 30.0  # wrk gets duration + this before it is killed
VERSION_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLEAN_STOPS = ("terminated", "already exited")  # what stop_process says when all went well

SignalHandler = Callable[[int, FrameType | None], Any]

_libc = ctypes.CDLL(None, use_errno=True)


class NotReady(Exception):
    """A server did not come up (or died before answering)."""


# --------------------------------------------------------------------------- output


def table(head: Sequence[str], rows: Iterable[Sequence[str]], left: Collection[int] = (0,)) -> str:
    """Columns padded to their widest cell, a rule under the head; the columns in ``left``
    left-aligned, the others right-aligned. When the last column is left-aligned its
    padding is dropped (lines end at their last character)."""
    all_rows = [list(head), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(head))]
    strip = len(head) - 1 in left
    lines = []
    for row in all_rows:
        line = "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append(line.rstrip() if strip else line)
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def log_step(tag: str, msg: str) -> None:
    """Progress on stderr, so that stdout holds only the report."""
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def one_line(reason: str) -> str:
    """A multi-line failure reason as one table note: its first and last lines."""
    lines = reason.strip().splitlines() or [""]
    return lines[0] + (f" | {lines[-1].strip()}" if len(lines) > 1 else "")


def add_run_options(p: argparse.ArgumentParser, start_timeout: bool = True) -> None:
    """The options of every benchmark that starts servers: how long they get to become ready,
    where the JSON report goes, whether to keep the temp dir."""
    if start_timeout:
        p.add_argument("--start-timeout", type=float, default=15.0, help="seconds to become ready")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")


# --------------------------------------------------------------------------- signals


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def catch_signals() -> None:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt, so that the cleanup of ``main`` runs;
    also when started with SIGINT ignored (``cmd &``)."""
    for sig in SIGNALS:
        signal.signal(sig, raise_interrupt)


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


def retire(proc: subprocess.Popen[bytes], procs: list[subprocess.Popen[bytes]], tag: str) -> str:
    """Stop ``proc`` (a server of one run), drop it from ``procs``; says how it stopped."""
    how = stop_process(proc)
    procs.remove(proc)
    if how not in CLEAN_STOPS:
        log_step(tag, f"stop: {how}")
    return how


def stop_all(procs: Sequence[subprocess.Popen[Any]], term_timeout: float = STOP_TIMEOUT) -> None:
    """Stop every process, the last started first; stderr names those that needed SIGKILL.

    The signals are ignored from here on: a second Ctrl-C must not cut the bounded cleanup
    short and leave processes behind.
    """
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for proc in reversed(procs):
        how = stop_process(proc, term_timeout)
        if how not in CLEAN_STOPS:
            print(f"cleanup: pid {proc.pid} ({proc.args!r}): {how}", file=sys.stderr)


def drop_tmp(tmp: Path, keep: bool) -> None:
    """Remove a run's temp dir, unless asked to keep it (then say where it is)."""
    if keep:
        print(f"kept temp dir {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def mcplb_python() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --------------------------------------------------------------------------- the build measured

# What `mcplb --version` prints and `mcplb run` logs first: the build of that process.
VERSION_LINE = re.compile(r"mcplb \S+ \((?:pure Python|compiled: [^)]*)\)")
MCPLB_MODULE = [mcplb_python(), "-P", "-m", "mcplb.proxy.cli"]


class WrongBuild(RuntimeError):
    """The process measured runs another build than the one asked for."""


def chosen_tree() -> Path | None:
    """The first PYTHONPATH entry that holds an ``mcplb`` package (build/compiled), if any:
    the build the user chose for this run."""
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and (Path(entry) / "mcplb" / "__init__.py").is_file():
            return Path(entry).resolve()
    return None


def mcplb_home() -> Path:
    """The folder holding the ``mcplb`` package the benchmark measures: the PYTHONPATH
    entry chosen (build/compiled), else the one this process finds (the checkout, or an
    installed copy)."""
    chosen = chosen_tree()
    if chosen is not None:
        return chosen
    spec = importlib.util.find_spec("mcplb")
    if spec is None or spec.origin is None:
        return REPO_ROOT
    return Path(spec.origin).parent.parent


def pin_mcplb_import() -> None:
    """The mcplb measured is the one PYTHONPATH names, in this process and in every mcplb
    a benchmark starts. The scripts put their own tree first on sys.path (for ``bench``),
    and from the repository root its pure ``mcplb/`` shadowed PYTHONPATH=build/compiled:
    here that entry goes first again for ``mcplb`` (``bench`` is imported already), first
    on the children's PYTHONPATH, and mcplb_cmd's ``python -P`` keeps their working
    directory off their path."""
    home = str(mcplb_home())
    if "mcplb" not in sys.modules and chosen_tree() is not None:
        sys.path.insert(0, home)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths[:1] != [home]:
        os.environ["PYTHONPATH"] = os.pathsep.join([home, *(p for p in paths if p != home)])


# At import, before any process is started, when a benchmark script runs (python
# bench/x.py or -m bench.x); not when the tests import these helpers: the test process's
# environment is not ours to change (its PYTHONPATH reached pip in test_wheels).
if Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parent:
    pin_mcplb_import()


def mcplb_version() -> str:
    """``mcplb --version`` of the mcplb that mcplb_cmd starts (same python, same path)."""
    out = subprocess.run(
        [*MCPLB_MODULE, "--version"],
        capture_output=True,
        text=True,
        timeout=VERSION_TIMEOUT,
        cwd=REPO_ROOT,
        check=False,
    )
    line = out.stdout.strip()
    if not VERSION_LINE.fullmatch(line):
        raise WrongBuild(f"mcplb --version printed {line!r}: {out.stderr.strip()}")
    return line


def logged_version(log: Path) -> str | None:
    """The version line a started ``mcplb run`` logged (at info level, its first line)."""
    try:
        found = VERSION_LINE.search(log.read_text(errors="replace"))
    except OSError:
        return None
    return found[0] if found else None


def compiled_here() -> bool:
    """Whether the mcplb this process imports has compiled modules (a build/compiled tree)."""
    home = mcplb_home() / "mcplb"
    for folder in ("proxy", "strategies", "healthcheck"):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if any((home / folder).resolve().rglob(f"*{suffix}")):
                return True
    return False


def checked_build(line: str) -> str:
    """The version line of a measured mcplb, refused (WrongBuild) when the run was meant to
    measure the compiled build and the process ran pure Python: MCPLB_BUILD=compiled in the
    environment, or this benchmark imports a compiled mcplb (PYTHONPATH=build/compiled)."""
    wanted = os.environ.get("MCPLB_BUILD") == "compiled" or compiled_here()
    if wanted and "(pure Python)" in line:
        raise WrongBuild(
            f"the compiled build was asked for (MCPLB_BUILD={os.environ.get('MCPLB_BUILD')}, "
            f"PYTHONPATH={os.environ.get('PYTHONPATH')}) but the mcplb measured runs pure "
            f"Python ({line}): not reporting it as compiled"
        )
    return line


def measured_build(log: Path | None = None) -> str:
    """The checked version line of the mcplb measured: the one its log holds, else the one
    ``mcplb --version`` prints with the same command."""
    line = (logged_version(log) if log is not None else None) or mcplb_version()
    return checked_build(line)


def in_process_version() -> str:
    """The version line of the mcplb this process imports."""
    from mcplb import __version__
    from mcplb.proxy.cli import build

    return f"mcplb {__version__} ({build()})"


def build_label(line: str) -> str:
    """A version line in short: "compiled (35 modules)" or "pure Python"."""
    found = re.search(r"\(compiled: ([^)]*)\)", line)
    return f"compiled ({len(found[1].split(', '))} modules)" if found else "pure Python"


# --------------------------------------------------------------------------- ports, readiness


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


def http_status(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1:port over a fresh connection: (status, start of the body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace")
    finally:
        conn.close()


def wait_until(
    proc: subprocess.Popen[Any], probe: Callable[[], str | None], timeout: float, log: Path
) -> None:
    """Poll ``probe`` until it answers None (ready), at most ``timeout`` seconds; otherwise
    it says what it saw. NotReady (with the end of ``log``) if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "port never accepted a connection"
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise NotReady(f"exited with status {rc} before becoming ready\n{tail(log)}")
        seen = probe()
        if seen is None:
            return
        last = seen
        time.sleep(0.1)
    raise NotReady(f"not ready after {timeout:.0f}s ({last})\n{tail(log)}")


def wait_http(
    proc: subprocess.Popen[bytes], port: int, path: str, timeout: float, log: Path
) -> None:
    """Bounded wait until ``GET path`` answers 200; NotReady if ``proc`` exits or time runs out."""

    def probe() -> str | None:
        try:
            status, body = http_status(port, path, timeout=1.0)
        except (OSError, http.client.HTTPException) as exc:
            return f"GET {path} failed: {exc!r}"
        return None if status == 200 else f"GET {path} answered {status}: {body.strip()[:200]}"

    wait_until(proc, probe, timeout, log)


def wait_port(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    """Bounded wait until ``port`` accepts connections (for servers where a request would
    start something, such as an event stream)."""

    def probe() -> str | None:
        with socket.socket() as sock:
            accepted = sock.connect_ex((HOST, port)) == 0
        return None if accepted else f"port {port} not accepting"

    wait_until(proc, probe, timeout, log)


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after "pid (comm)": state ppid pgrp ... (None: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # exited meanwhile


def _all_stats() -> Iterable[tuple[int, list[str]]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
            yield int(entry), fields


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from /proc/*/stat."""
    return sorted(
        pid
        for pid, fields in _all_stats()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid
    )


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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of ``pid`` so far, to the nanosecond: the
    process's CPU-time clock. /proc/PID/stat gives the same in 10 ms ticks, too coarse for
    runs of a second or two."""
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
        return time.clock_gettime(clock.value)
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def group_cpu_seconds(pgids: set[int]) -> float:
    """CPU seconds of every live process in these process groups (with reaped children)."""
    total = 0
    for _, fields in _all_stats():
        if int(fields[2]) in pgids:  # pgrp; then utime stime cutime cstime at 11..14
            total += sum(int(x) for x in fields[11:15])
    return total / CLOCK_TICKS


def pin_proxies(
    proxies: Sequence[int], others: Sequence[int], cpus: Collection[int] | None = None
) -> set[int]:
    """Proxies (pids) on the last CPU, ``others`` and this process on the rest (Linux).
    ``cpus``: the CPUs to share out (default: this process's, which the first call narrows:
    a later call for another proxy passes the set the first one returned).

    Returns this process's affinity before, to give back with ``os.sched_setaffinity``.
    Unpinned, where the scheduler puts four busy processes on two cores changes from run
    to run, and with it the cost of every wake-up and each proxy's CPU per request; pinned,
    each proxy also gets one core, as in the comparisons with HAProxy (``nbthread 1``).
    """
    before = os.sched_getaffinity(0)
    usable = sorted(before if cpus is None else cpus)
    if len(usable) < 2:
        return before
    for pid in proxies:
        os.sched_setaffinity(pid, usable[-1:])
    for pid in [*others, 0]:
        os.sched_setaffinity(pid, usable[:-1])
    return before


# --------------------------------------------------------------------------- wrk

_TIME_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_METRIC = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_time_ms(text: str) -> float:
    """wrk time ("523.45us", "1.20ms", "2.00s", "1.50m") -> milliseconds."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(us|ms|s|m|h)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m[1]) * _TIME_TO_MS[m[2]]


def parse_metric(text: str) -> float:
    """wrk count ("95.12k", "1.02M", "812") -> number (decimal suffixes)."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([kMGTP]?)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk metric: {text!r}")
    return float(m[1]) * _METRIC[m[2]]


def parse_bytes(text: str) -> float:
    """wrk size ("15.02MB", "512.00B", "1.5KB") -> bytes (binary suffixes)."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([KMGTP]?)B", text.strip())
    if m is None:
        raise ValueError(f"not a wrk size: {text!r}")
    return float(m[1]) * _BINARY[m[2]]


@dataclass
class WrkResult:
    requests_per_sec: float
    transfer_bytes_per_sec: float
    total_requests: int
    total_bytes: float
    elapsed_s: float
    latency_avg_ms: float
    latency_stdev_ms: float
    latency_max_ms: float
    percentiles_ms: dict[str, float]  # "p50", "p75", "p90", "p99"
    socket_errors: dict[str, int]  # connect/read/write/timeout
    non_2xx_3xx: int

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    def socket_error_text(self) -> str:
        """ "read 12, timeout 41": the kinds of socket error that happened."""
        return ", ".join(f"{k} {v}" for k, v in self.socket_errors.items() if v)


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the stdout of ``wrk --latency``; raise ValueError if a required line is missing."""

    def need(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            raise ValueError(f"wrk output has no line matching {pattern!r}:\n{text}")
        return m

    lat = need(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)")
    total = need(r"^\s*(\d+) requests in (\S+), (\S+) read")
    rps = need(r"^Requests/sec:\s+([0-9.]+)")
    tps = need(r"^Transfer/sec:\s+(\S+)")
    percentiles = {
        f"p{int(float(m[1]))}": parse_time_ms(m[2])
        for m in re.finditer(r"^\s*([0-9.]+)%\s+(\S+)\s*$", text, re.MULTILINE)
    }
    for p in ("p50", "p90", "p99"):
        if p not in percentiles:
            raise ValueError(f"wrk output has no {p} (was --latency passed?):\n{text}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sock is not None:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return WrkResult(
        requests_per_sec=float(rps[1]),
        transfer_bytes_per_sec=parse_bytes(tps[1]),
        total_requests=int(total[1]),
        total_bytes=parse_bytes(total[3]),
        elapsed_s=parse_time_ms(total[2]) / 1e3,
        latency_avg_ms=parse_time_ms(lat[1]),
        latency_stdev_ms=parse_time_ms(lat[2]),
        latency_max_ms=parse_time_ms(lat[3]),
        percentiles_ms=percentiles,
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx[1]) if non2xx else 0,
    )


def run_wrk(
    threads: int,
    connections: int,
    duration: int,
    port: int,
    procs: list[subprocess.Popen[bytes]],
    script: Path | None = None,
) -> tuple[list[str], int, str]:
    """Run ``wrk --latency`` (bounded by duration + WRK_SLACK), with the Lua ``script`` if
    given; returns (command, exit status, output)."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(f"http://{HOST}:{port}/")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.append(proc)
    try:
        out, _ = proc.communicate(timeout=duration + WRK_SLACK)
    except subprocess.TimeoutExpired:
        stop_process(proc, term_timeout=2.0)
        return cmd, -1, f"wrk did not finish within {duration + WRK_SLACK:.0f}s"
    finally:
        if proc.poll() is not None:
            procs.remove(proc)
    return cmd, proc.returncode, out.decode(errors="replace")


# --------------------------------------------------------------------------- configs


def mcplb_config(
    port: int,
    head: Sequence[str],
    backends: Mapping[str, int],
    tail: Sequence[str] = (),
    weights: Mapping[str, int] | None = None,
) -> str:
    """mcplb's YAML: listen on 127.0.0.1:``port``, the top-level lines ``head``, then the
    ``backends`` (name -> port on 127.0.0.1; each with its weight, 1 unless given, when
    ``weights`` is), then the lines ``tail``."""
    lines = [f"listen: {HOST}:{port}", *head, "backends:"]
    for name, backend_port in backends.items():
        weight = "" if weights is None else f", weight: {weights.get(name, 1)}"
        lines.append(f'  - {{name: {name}, url: "http://{HOST}:{backend_port}"{weight}}}')
    return "\n".join([*lines, *tail]) + "\n"


def mcplb_cmd(config: Path, *options: str) -> list[str]:
    """``python -P -m mcplb.proxy.cli run --config FILE [options]`` with mcplb's python. -P:
    the working directory is not put first on the path (from the repository root its pure
    modules would shadow PYTHONPATH=build/compiled); ``pin_mcplb_import`` says which."""
    return [*MCPLB_MODULE, "run", "--config", str(config), *options]


NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_conf(tmp: Path, name: str, master: bool, http_body: str) -> Path:
    """A one-worker nginx config in ``tmp`` (temp paths, pid and error log in there too)
    around ``http_body`` (the servers and upstreams of the ``http`` block)."""
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / name}_{kind};" for kind in NGINX_TEMP_DIRS)
    conf = f"""\
worker_processes 1;
daemon off;
master_process {"on" if master else "off"};
pid {tmp / name}.pid;
error_log {tmp / name}.error.log warn;
events {{
    worker_connections 10240;
}}
http {{
    access_log off;
{temp_paths}
    keepalive_requests 100000;
    keepalive_timeout 65s;
{http_body}
}}
"""
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    return path


def nginx_cmd(tmp: Path, name: str, conf: Path) -> list[str]:
    return ["nginx", "-p", str(tmp), "-e", f"{tmp / name}.error.log", "-c", str(conf)]


def nginx_backend(n: int, port: int) -> str:
    """An nginx server block answering every request "hello from backend N"."""
    return f"""\
    server {{
        listen {HOST}:{port};
        default_type text/plain;
        location / {{
            return 200 "hello from backend {n}\\n";
        }}
    }}"""


def haproxy_conf(tmp: Path, port: int, backend_ports: list[int], connections: int) -> Path:
    """HAProxy round robin over the backends: one thread, keep-alive, connections reused."""
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backend_ports, 1))
    conf = f"""\
global
    nbthread 1
    maxconn {max(4096, 2 * connections)}
    pidfile {tmp / "haproxy.pid"}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe
    bind {HOST}:{port}
    default_backend be

backend be
    balance roundrobin
{servers}
"""
    path = tmp / "haproxy.cfg"
    path.write_text(conf)
    return path


# --------------------------------------------------------------------------- the machine


def first_line(cmd: list[str]) -> str:
    """The first line ``cmd`` prints (a version), or why there is none."""
    if shutil.which(cmd[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def package_version(name: str) -> str:
    """The version of package ``name`` that mcplb's python imports."""
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return first_line([mcplb_python(), "-c", code])


_TOOL_VERSIONS: dict[str, Callable[[], str]] = {
    "wrk": lambda: re.sub(r"\s+Copyright.*", "", first_line(["wrk", "--version"])),
    "haproxy": lambda: first_line(["haproxy", "-v"]).split(" - ")[0],
    "nginx": lambda: first_line(["nginx", "-v"]).removeprefix("nginx version: "),
}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info(tools: Sequence[str] = (), mcplb: bool = True) -> dict[str, Any]:
    """What a run was measured on: CPUs, kernel, load, the versions of ``tools`` (of wrk,
    haproxy, nginx), this python and (``mcplb``) the python and event loop mcplb runs on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    info.update({tool: _TOOL_VERSIONS[tool]() for tool in tools})
    info["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    # The build measured: the mcplb processes started (as mcplb_cmd starts them), or with
    # ``mcplb`` False this process's own (a benchmark that measures in-process).
    info["mcplb_build"] = measured_build() if mcplb else checked_build(in_process_version())
    if mcplb:
        info["mcplb_python"] = first_line(
            [
                mcplb_python(),
                "-c",
                "import importlib.metadata as m, platform;"
                "print(platform.python_version(), 'uvloop', m.version('uvloop'),"
                " 'httptools', m.version('httptools'))",
            ]
        )
    return info
