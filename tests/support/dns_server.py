"""A real DNS server for the discovery tests: dnsmasq on 127.0.0.1, on a port of its own.

It reads only the files written here (no /etc/hosts, no upstream servers, not the system's
resolver, never port 53); ``set_hosts`` rewrites its hosts file and SIGHUPs it, which makes
dnsmasq read the file again. Debian package: dnsmasq-base (``make system-deps``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.support.tiers import require

SERVICE = "dnsmasq"  # tests that reach this module need it (tests/support/tiers.py)
FALLBACK_BINARY = "/usr/sbin/dnsmasq"


def find_dnsmasq() -> str:
    require(SERVICE)
    found = shutil.which("dnsmasq") or (
        FALLBACK_BINARY if os.access(FALLBACK_BINARY, os.X_OK) else None
    )
    if found is None:
        raise RuntimeError("the discovery tests need dnsmasq: apt-get install dnsmasq-base")
    return found


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for dnsmasq")


class DnsServer:
    """One dnsmasq process; ``hosts`` maps a name to its addresses."""

    def __init__(
        self, directory: Path, hosts: dict[str, list[str]], srv: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        self.hosts_file = directory / "dns-hosts"
        self.port = free_udp_and_tcp_port()
        self.srv = srv  # --srv-host values: "_service._tcp.name,target,port"
        self.process: subprocess.Popen[bytes] | None = None
        self.write_hosts(hosts)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_hosts(self, hosts: dict[str, list[str]]) -> None:
        """The records to serve from the next start (or SIGHUP: see set_hosts)."""
        lines = [f"{address} {name}" for name, addresses in hosts.items() for address in addresses]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.hosts_file)

    def start(self, timeout: float = 10.0) -> None:
        user = pwd.getpwuid(os.geteuid()).pw_name  # as root it would switch to "nobody"
        argv = [
            find_dnsmasq(),
            "--no-daemon",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts_file}",
            f"--pid-file={self.directory / 'dnsmasq.pid'}",
            f"--user={user}",
            "--local-ttl=0",  # answers are never cached by anyone
            "--local=/test/",  # names under .test: answered here (NXDOMAIN, not REFUSED)
            *(f"--srv-host={value}" for value in self.srv),
        ]
        log = open(self.directory / "dnsmasq.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while self.answers() is None:
                if self.process.poll() is not None:
                    raise RuntimeError(f"dnsmasq exited: {self.log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dnsmasq did not answer within {timeout}s: {self.log()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()  # never leave it running
            raise

    def answers(self, name: str = "nonexistent.test", rdtype: str = "A") -> list[str] | None:
        """What the server answers for ``name`` now (None: no answer at all)."""
        query = dns.message.make_query(name, rdtype)
        try:
            response = dns.query.udp(query, "127.0.0.1", timeout=0.5, port=self.port)
        except (dns.exception.Timeout, OSError):
            return None
        if response.rcode() != dns.rcode.NOERROR:
            return []
        return sorted(rr.to_text() for rrset in response.answer for rr in rrset)

    def set_hosts(self, hosts: dict[str, list[str]], timeout: float = 10.0) -> None:
        """Serve these records from now on (returns once dnsmasq answers with them)."""
        self.write_hosts(hosts)
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        for name, addresses in hosts.items():
            while self.answers(name) != sorted(addresses):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dnsmasq still answers {self.answers(name)} for {name}")
                time.sleep(0.05)

    def pause(self) -> None:
        """Stop answering (SIGSTOP): lookups time out. Not a stop and start, whose port
        an ephemeral connection may take in between."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # if paused: it must see the SIGTERM
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "dnsmasq.log").read_text(errors="replace")
        return ""
