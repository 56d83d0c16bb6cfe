"""A worker the supervisor starts while the others serve (it replaces one that died) must
know the backends DNS discovery found before it accepts a connection: the sessions bound to
them (in Redis or in signed ids) reach it at once, and a backend it does not know yet gets
them 404. Found by the mixed-era soak (bench/soak.py --mixed): a DELETE right after a
worker's SIGKILL got mcplb's 404 for a session on a discovered backend. In-process, no DNS
server needed: the set worker 0 shared is already in the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcplb.proxy.cluster.discovery import write_shared
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.server.worker import ProxyServer

CONFIG = """
listen: 127.0.0.1:0
admin: {enabled: false}
sticky: {store: signed, keys: ["discovery-restart-key-0123456789abcdefgh"]}
backends: [{name: static, url: "http://127.0.0.2:9"}]
discovery:
  dns: {name: mcp.test, port: 9, interval: 1h, resolvers: ["127.0.0.1:9"],
        allow_networks: [127.0.0.0/8]}
"""


@pytest.mark.parametrize("worker", [1, 0])
async def test_a_started_worker_serves_the_shared_set_from_its_first_connection(
    tmp_path: Path, worker: int
) -> None:
    write_shared(tmp_path, (("127.0.0.3", 9), ("127.0.0.4", 9)))
    proxy = ProxyServer(parse_config(CONFIG), worker=worker, state_dir=tmp_path)
    await proxy.start()
    try:
        names = {b.name for b in proxy.runtime.cluster.backends.backends if not b.draining}
        assert names == {"static", "127.0.0.3-9", "127.0.0.4-9"}
    finally:
        await proxy.shutdown(0.1)
