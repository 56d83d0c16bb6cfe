"""The Cluster on its own (no sockets, no probes): what a reload keeps, reconfigures, adds,
moves and retires, and that availability is written by the health monitor alone (draining
only by the cluster)."""

from __future__ import annotations

import time

import pytest

from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config
from mcplb.strategies.base import RequestFacts
from mcplb.strategies.least_connections import LeastConnections
from mcplb.strategies.registry import StrategyLoadError
from mcplb.strategies.round_robin import RoundRobin

GRACE = 30.0


def config(*backends: tuple[str, int, int], extra: str = "", connect: float = 2.0) -> Config:
    """A parsed config with these (name, port, weight) backends; ``extra``: more YAML."""
    lines = ["backends:"]
    for name, port, weight in backends:
        lines += [f"  - name: {name}", f"    url: http://127.0.0.1:{port}", f"    weight: {weight}"]
    lines += ["timeouts:", f"  grace: {GRACE}s", f"  connect: {connect}s"]
    text = "\n".join(lines) + "\n" + extra
    return parse_config(text, environ={})


# Active checks on (never run: probing=False), one failed probe takes a backend down.
ACTIVE = "health:\n  active:\n    fall: 1\n    rise: 1\n"
START = config(("a", 9001, 1), ("b", 9002, 1), ("c", 9003, 1), extra=ACTIVE)


def names(backends: object) -> list[str]:
    return [b.name for b in backends]  # type: ignore[attr-defined]


def up(cluster: Cluster) -> list[Backend]:
    """The candidates a strategy may pick (the available ones)."""
    return [b for b in cluster.candidates if b.available]


def test_built_from_the_config() -> None:
    limits = "limits:\n  max_in_flight: 7\n"
    cluster = Cluster(config(("a", 9001, 2), ("b", 9002, 1), extra=limits), probing=False)
    a, b = cluster.backends
    assert names(cluster.backends) == ["a", "b"] and names(up(cluster)) == ["a", "b"]
    assert cluster.pool(a).backend is a and cluster.pool(b).backend is b
    assert cluster.pool(a).connect_timeout == 2.0
    assert cluster.admission.max_in_flight == 7
    assert isinstance(cluster.strategy, RoundRobin)
    assert cluster.health.probing is False
    assert (a.weight, b.weight) == (200, 100)  # configured weights, scaled


async def test_reload_keeps_reconfigures_adds_moves_and_retires() -> None:
    cluster = Cluster(START, probing=False)
    a, b, c = cluster.backends
    pool_a = cluster.pool(a)
    version = cluster.version
    new = config(
        ("a", 9001, 3),  # reweighted
        ("b", 9102, 1),  # same name, new endpoint
        ("d", 9004, 1),  # added; c removed
        extra=ACTIVE + "strategy: least_connections\n",
        connect=5.0,
    )
    before = time.time()
    changes = await cluster.reload(new)
    assert changes == [
        "backend a reconfigured",
        "backend b now at http://127.0.0.1:9102",
        "backend d added",
        "backend c removed (draining)",
    ]
    kept, moved_to, added = cluster.backends
    assert kept is a and cluster.pool(a) is pool_a  # same object: counters, pool, health
    assert a.weight == a.base_weight == 300  # the monitor wrote the reloaded weight
    assert pool_a.connect_timeout == 5.0
    assert moved_to is not b and moved_to.port == 9102 and added.name == "d"
    assert cluster.pool(moved_to).backend is moved_to and cluster.pool(added).backend is added
    assert names(up(cluster)) == ["a", "b", "d"]
    assert cluster.version > version
    assert isinstance(cluster.strategy, LeastConnections)
    # The removed backend and the moved one's old endpoint drain: out of the routing list,
    # unavailable, reachable by name (the moved name reaches the new endpoint).
    for old in (b, c):
        assert old.draining and not old.available
        assert old.drain_until is not None
        assert before + GRACE <= old.drain_until <= time.time() + GRACE
        assert old not in cluster.backends.backends
    assert cluster.backends.get("b") is moved_to and cluster.backends.get("c") is c
    assert cluster.health.status().keys() == {"a", "b", "d"}


async def test_a_refused_reload_changes_nothing() -> None:
    cluster = Cluster(START, probing=False)
    before = list(cluster.backends)
    strategy, version = cluster.strategy, cluster.version
    refused = config(("a", 9001, 5), ("z", 9009, 1), extra="strategy: no_such_strategy\n")
    with pytest.raises(StrategyLoadError):
        await cluster.reload(refused)
    assert list(cluster.backends) == before and before[0].base_weight == 100
    assert cluster.strategy is strategy and cluster.version == version
    assert not any(b.draining for b in before) and cluster.backends.get("z") is None


def test_set_draining_changes_availability_through_the_monitor() -> None:
    cluster = Cluster(START, probing=False)
    a, b, _ = cluster.backends
    version = cluster.version
    until = time.time() + 60
    cluster.set_draining("a", True, until)
    assert a.draining and a.drain_until == until and not a.available
    assert names(up(cluster)) == ["b", "c"] and cluster.version > version
    assert cluster.health.status()["a"]["available"] is False
    cluster.set_draining("a", False, until)  # undrained: the deadline goes
    assert not a.draining and a.drain_until is None and a.available
    assert names(up(cluster)) == ["a", "b", "c"]
    # Availability is the monitor's verdict and the drain flag together: an undrained
    # backend that failed its checks meanwhile stays out.
    cluster.set_draining("b", True)
    cluster.health.record_probe(b, False, "connection refused")
    cluster.set_draining("b", False)
    assert not b.draining and not b.available
    assert names(up(cluster)) == ["a", "c"]
    with pytest.raises(KeyError):
        cluster.set_draining("nobody", True)


def test_health_verdicts_change_availability_and_the_version() -> None:
    cluster = Cluster(START, probing=False)
    c = cluster.backends.by_name["c"]
    version = cluster.version
    cluster.health.record_probe(c, False, "connection refused")
    assert not c.available and cluster.version > version
    assert names(up(cluster)) == ["a", "b"]
    version = cluster.version
    cluster.health.record_probe(c, True, "HTTP 200")
    assert c.available and cluster.version > version
    assert names(up(cluster)) == ["a", "b", "c"]
    version = cluster.version
    candidates = cluster.candidates
    cluster.health.record_probe(c, True, "HTTP 200")  # nothing changed: same version
    assert cluster.version == version and cluster.candidates is candidates


@pytest.mark.parametrize("strategy", ["round_robin", "random", "power_of_two", "ip_hash"])
def test_strategies_indexing_the_candidates_follow_every_change(strategy: str) -> None:
    """Strategies keep indexes for as long as they are handed the same list object; the
    cluster hands them a new one on every change, so a backend that goes down is skipped
    from the next pick on, and one that comes back is picked again."""
    backends = (("a", 9001, 1), ("b", 9002, 1), ("c", 9003, 1))
    cluster = Cluster(config(*backends, extra=ACTIVE + f"strategy: {strategy}\n"), probing=False)
    c = cluster.backends.by_name["c"]

    def picks(n: int) -> set[str]:
        found = set()
        for i in range(n):
            facts = RequestFacts(f"10.0.{i // 250}.{i % 250}", "GET", "/", ())
            backend = cluster.strategy.pick(cluster.candidates, facts)
            assert backend is not None
            found.add(backend.name)
        return found

    assert picks(300) == {"a", "b", "c"}
    cluster.health.record_probe(c, False, "connection refused")
    assert picks(300) == {"a", "b"}
    cluster.health.record_probe(c, True, "HTTP 200")
    assert picks(300) == {"a", "b", "c"}


async def test_retire_over_closes_the_pools_of_backends_past_their_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = Cluster(START, probing=False)
    _, b, c = cluster.backends
    pool_b, pool_c = cluster.pool(b), cluster.pool(c)
    await cluster.reload(config(("a", 9001, 1), ("b", 9102, 1), extra=ACTIVE))
    assert cluster.retire_over() == []  # still draining: reachable, pools open
    assert cluster.backends.get("c") is c and not pool_c.closed
    later = time.time() + GRACE + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert set(cluster.retire_over()) == {b, c}
    assert pool_b.closed and pool_c.closed
    assert b not in cluster.pools and c not in cluster.pools
    assert cluster.backends.get("c") is None
    assert cluster.backends.get("b") is cluster.backends.backends[1]  # the new endpoint
    assert cluster.retire_over() == []
    cluster.close_pools()
    assert all(pool.closed for pool in cluster.pools.values())


@pytest.mark.parametrize("strategy", ["least_connections", "least_sessions"])
def test_load_indexing_strategies_hear_of_every_slot_held_and_released(strategy: str) -> None:
    """With 20 backends a least-loaded strategy picks from its load index; the admission
    slots (and the runtime's session counts) tell it of every change, so holding a slot on
    each pick spreads 40 picks exactly evenly, and releasing them all brings it back."""
    backends = [(f"b{i:02}", 9000 + i, 1) for i in range(20)]
    cluster = Cluster(config(*backends, extra=f"strategy: {strategy}\n"), probing=False)
    assert cluster.admission.on_load == cluster.strategy.load_changed
    held = []
    for _ in range(40):
        backend = cluster.strategy.pick(cluster.candidates, RequestFacts("", "", "", ()))
        assert backend is not None
        cluster.admission.hold(backend, False)
        backend.sessions += 1  # as SessionCounts.bound does, with its notice
        cluster.strategy.load_changed(backend)
        held.append(backend)
    assert sorted(b.in_flight for b in cluster.backends) == [2] * 20
    for backend in held:
        cluster.admission.release(backend, False)
    assert all(b.in_flight == 0 for b in cluster.backends)


async def test_a_reloaded_strategy_is_the_one_told_of_load_changes() -> None:
    cluster = Cluster(START, probing=False)
    assert cluster.admission.on_load is None  # round_robin does not index by load
    changed = config(
        ("a", 9001, 1),
        ("b", 9002, 1),
        ("c", 9003, 1),
        extra=ACTIVE + "strategy: least_connections\n",
    )
    await cluster.reload(changed)
    assert isinstance(cluster.strategy, LeastConnections)
    assert cluster.admission.on_load == cluster.strategy.load_changed
