"""Task bindings shared by the workers of one host with ``sticky.store: signed``
(proxy/sessions/host_share.py): two stores on one directory stand for two workers; the
clock is injected. Then on real processes: 2 workers, signed ids, each request on a new
connection: before, the first tasks/get reached the holder 14 times in 30 (issue 24)."""

from __future__ import annotations

from pathlib import Path

from mcplb.proxy.sessions.host_share import HostSharedStore
from tests.support.peers import LOOPBACK, Peers, free_port, wait_for_port
from tests.test_mcp2026_proxy import TASK_COUNT, TasksBackend, config, task_routing

KEY = "host-share-test-key-" + "h" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(directory: Path, clock: Clock, cap: int = 100) -> tuple[HostSharedStore, HostSharedStore]:
    return (
        HostSharedStore(directory, 3600.0, cap, clock),
        HostSharedStore(directory, 3600.0, cap, clock),
    )


async def test_a_binding_made_by_one_worker_is_found_by_the_other(tmp_path: Path) -> None:
    clock = Clock()
    one, two = pair(tmp_path, clock)
    assert await one.bind("task-1", "t2", 60.0) is None
    assert two.known("task-1") is None  # not in its table yet
    assert await two.get("task-1") == "t2"  # read from the host's file
    assert two.known("task-1") == "t2"  # and kept
    assert await two.get("task-unknown") is None
    await one.forget("task-1")
    assert await HostSharedStore(tmp_path, 3600.0, 100, clock).get("task-1") is None


async def test_expired_bindings_are_not_found_and_their_files_go(tmp_path: Path) -> None:
    clock = Clock()
    one, two = pair(tmp_path, clock)
    await one.bind("task-1", "t0", 1.0)
    await one.bind("task-2", "t1", None)  # the store's TTL (3600 s)
    clock.now += 2
    assert await two.get("task-1") is None
    assert await two.get("task-2") == "t1"
    one.expire()
    assert len(list(tmp_path.iterdir())) == 1
    clock.now += 3600
    one.expire()
    assert list(tmp_path.iterdir()) == []


async def test_a_worker_keeps_at_most_its_cap_of_files(tmp_path: Path) -> None:
    one, _ = pair(tmp_path, Clock(), cap=3)
    for i in range(10):
        await one.bind(f"task-{i}", "t0", 60.0)
    assert len(list(tmp_path.iterdir())) == 3
    assert await one.get("task-9") == "t0"


async def test_a_damaged_file_is_no_binding(tmp_path: Path) -> None:
    clock = Clock()
    one, two = pair(tmp_path, clock)
    await one.bind("task-1", "t0", 60.0)
    (path,) = tmp_path.iterdir()
    for data in (b"", b"t0", b"t0\nsoon", b"\n1900000000", b"x" * 500 + b"\n1900000000"):
        path.write_bytes(data)
        assert await two.get("task-1") is None, data


async def test_signed_with_two_workers_routes_tasks_over_new_connections(
    tmp_path: Path,
) -> None:
    backends = [TasksBackend(f"t{i}", free_port()) for i in range(3)]
    async with Peers() as peers:
        peers.started.extend(backends)
        for backend in backends:
            await wait_for_port(LOOPBACK, backend.port, 20.0, process=backend)
        port = free_port()
        sticky = f"sticky:\n  store: signed\n  keys: ['{KEY}']\n"
        text = config(backends, port, workers=2, sticky=sticky)
        proxy = await peers.proxy(text, tmp_path, port=port)
        fresh = await task_routing(f"{proxy.url}/mcp", fresh_connections=True)
        print(f"\nworkers=2 store=signed new connections: {fresh}")
        assert fresh == (TASK_COUNT, TASK_COUNT)
