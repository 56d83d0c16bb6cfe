"""``mcplb demo`` prints its banner once the proxy's port is bound and listening (``serve``'s
``bound`` callback), not before: a client as fast as the reader is not refused, and a port
taken after the demo's own check shows no banner at all, only the error.

``serve`` runs in a child process (it installs signal handlers and blocks): the callback
connects to the port the moment it is called, then stops the proxy with SIGTERM.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from tests.support.peers import free_port

CHILD = textwrap.dedent(
    """
    import os, signal, socket, sys
    from mcplb.proxy.config.schema import AdminConfig, BackendConfig, Config
    from mcplb.proxy.server.supervisor import serve

    port = int(sys.argv[1])
    config = Config(
        listen_host="127.0.0.1",
        listen_port=port,
        backends=(BackendConfig("a", "http://127.0.0.1:9", "http", "127.0.0.1", 9),),
        admin=AdminConfig(enabled=False),
    )

    def bound():
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            print("banner: connected", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # held until the worker runs, then drains

    sys.exit(serve(config, bound=bound))
    """
)


def run_child(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(port)], capture_output=True, text=True, timeout=30
    )


def test_the_banner_comes_once_the_port_listens() -> None:
    done = run_child(free_port())
    assert "banner: connected" in done.stdout, done.stderr
    assert done.returncode == 0, done.stderr


def test_no_banner_when_the_port_cannot_be_had() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_child(taken.getsockname()[1])
    assert "banner" not in done.stdout
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr
