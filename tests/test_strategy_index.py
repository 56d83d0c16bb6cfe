"""The indexed picks of the built-in strategies: a list object passed again is indexed
(see Strategy.pick); the picks must be exactly those of the scan that any other list
gets, and a new list object must be honoured on the very next pick."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from mcplb.strategies.base import NO_FACTS, RequestFacts, Strategy
from mcplb.strategies.registry import build
from tests.test_strategies import FakeBackend

# The strategies with an indexed path, and options that make them reproducible.
INDEXED: list[tuple[str, dict[str, Any]]] = [
    ("round_robin", {}),
    ("random", {"seed": 11}),
    ("power_of_two", {"seed": 11}),
    ("ip_hash", {"table_size": 1009}),
]
IDS = [spec for spec, _ in INDEXED]


def make_pool(rng: random.Random, size: int) -> list[FakeBackend]:
    """Weights 0..6 (mostly > 0), a few unavailable, random load."""
    return [
        FakeBackend(
            f"b{i}",
            weight=rng.choice([0, 1, 2, 3, 4, 5, 6, 100]),
            in_flight=rng.randint(0, 9),
            available=rng.random() > 0.1,
        )
        for i in range(size)
    ]


def changed(pool: list[FakeBackend], rng: random.Random) -> list[FakeBackend]:
    """A new list object, as the cluster makes when membership, availability or a weight
    changes: one backend's weight or availability flipped, or one dropped or re-added."""
    pool = list(pool)
    target = pool[rng.randrange(len(pool))]
    what = rng.randrange(3)
    if what == 0:
        target.weight = rng.choice([0, 1, 3, 7])
    elif what == 1:
        target.available = not target.available
    elif len(pool) > 1:
        pool.remove(target)
    return pool


def next_lists(
    routing: list[FakeBackend], rng: random.Random
) -> tuple[list[FakeBackend], Sequence[FakeBackend]]:
    """The routing list for the next pick (now and then a changed one) and the list the
    pick gets: mostly the routing list itself, now and then a retry's one-off list (a new
    object without one backend)."""
    if rng.random() < 0.001:
        routing = changed(routing, rng)
    if rng.random() < 0.003:
        skip = rng.randrange(len(routing))
        return routing, [b for i, b in enumerate(routing) if i != skip]
    return routing, routing


def request(rng: random.Random) -> RequestFacts:
    return RequestFacts(f"10.0.{rng.randrange(4)}.{rng.randrange(256)}", "POST", "/mcp", ())


@pytest.mark.parametrize(("spec", "options"), INDEXED, ids=IDS)
@pytest.mark.parametrize("size", [2, 7, 60])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indexed_and_scanned_picks_are_identical(
    spec: str, options: dict[str, Any], size: int, seed: int
) -> None:
    """In lockstep over the same backends: one strategy gets the routing list object
    (indexed), the other a fresh copy each pick (always scanned). Between picks the
    load moves, one-off filtered lists come (as for a retry) and now and then the
    routing list is replaced by a changed one."""
    rng = random.Random(seed)
    indexed, scanned = build(spec, options), build(spec, options)
    routing = make_pool(rng, size)
    for step in range(6000):
        routing, backends = next_lists(routing, rng)
        facts = request(rng) if indexed.uses_request else NO_FACTS
        first = indexed.pick(backends, facts)
        assert first is scanned.pick(list(backends), facts), step
        eligible = [b for b in backends if b.available and b.weight > 0]
        assert (first is None) == (not eligible)
        assert first is None or any(first is b for b in eligible)
        loaded = routing[rng.randrange(len(routing))]
        loaded.in_flight = max(0, loaded.in_flight + rng.choice([-1, 1]))


@pytest.mark.parametrize(("spec", "options"), INDEXED, ids=IDS)
def test_a_new_list_object_is_honoured_on_the_very_next_pick(
    spec: str, options: dict[str, Any]
) -> None:
    strategy = build(spec, options)
    rng = random.Random(5)
    routing = make_pool(rng, 9)
    for backend in routing:
        backend.available, backend.weight, backend.in_flight = True, 2, 0
    for _ in range(500):  # long enough to index the list and replay it
        strategy.pick(routing, request(rng))
    for gone in range(len(routing)):
        # Each backend in turn goes down (a new list, its object unavailable) and then
        # has weight 0: not one pick of the new lists may land on it.
        down = list(routing)
        down[gone] = FakeBackend(routing[gone].name, 2, available=False)
        zero = list(routing)
        zero[gone] = FakeBackend(routing[gone].name, 0)
        for pool in (down, zero):
            picked = {id(strategy.pick(pool, request(rng))) for _ in range(300)}
            assert picked <= {id(b) for b in pool if b.available and b.weight > 0}
        picked = {id(strategy.pick(routing, request(rng))) for _ in range(300)}
        assert id(routing[gone]) in picked  # back in the list: picked again


class CountingBackend(FakeBackend):
    """Counts reads of ``weight``: a scan reads it once per backend per pick."""

    reads = 0

    def __getattribute__(self, name: str) -> Any:
        if name in ("weight", "base_weight"):
            CountingBackend.reads += 1
        return super().__getattribute__(name)


@pytest.mark.parametrize(("spec", "options"), INDEXED, ids=IDS)
def test_a_pick_on_the_same_list_reads_a_constant_number_of_backends(
    spec: str, options: dict[str, Any]
) -> None:
    rng = random.Random(3)
    routing = [CountingBackend(f"b{i}", rng.randint(1, 5)) for i in range(1000)]
    strategy: Strategy = build(spec, options)
    for _ in range(10_000):  # index the list; round_robin records a period (<= 5000 picks)
        strategy.pick(routing, request(rng))
    CountingBackend.reads = 0
    for _ in range(1000):
        assert strategy.pick(routing, request(rng)) is not None
    assert CountingBackend.reads <= 3 * 1000  # a scan would read 1,000,000


# The strategies that index backends by load: exact only with the proxy's notices of
# every load change (``load_changed``), which the lockstep test below gives.
LOAD_TRACKING = ["least_connections", "least_sessions"]


@pytest.mark.parametrize("spec", LOAD_TRACKING)
@pytest.mark.parametrize("size", [16, 60, 300])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_load_indexed_and_scanned_picks_are_identical(spec: str, size: int, seed: int) -> None:
    """As above, for the least-loaded strategies: in-flight, stream and session counts move
    after every pick (each move notified, as the cluster's admission and the runtime do),
    ties included (many backends share a load), and the rotation of ties must match."""
    rng = random.Random(seed)
    indexed, scanned = build(spec, {}), build(spec, {})
    assert indexed.tracks_load
    routing = make_pool(rng, size)
    for backend in routing:
        backend.in_flight = rng.randint(0, 2)
        backend.sessions = rng.randint(0, 3)
        backend.max_sessions = rng.choice([None, None, 3])
    for step in range(6000):
        routing, backends = next_lists(routing, rng)
        first = indexed.pick(backends, NO_FACTS)
        assert first is scanned.pick(list(backends), NO_FACTS), step
        moved = first if first is not None and rng.random() < 0.5 else rng.choice(routing)
        what = rng.randrange(3)
        if what == 0:
            moved.in_flight += 1
        elif what == 1 and moved.in_flight > moved.streams:
            moved.in_flight -= 1
        elif moved.in_flight > moved.streams and rng.random() < 0.5:
            moved.streams += 1  # a response turned out to be an event stream
        else:
            moved.sessions = max(0, moved.sessions + rng.choice([-1, 1]))
        indexed.load_changed(moved)


@pytest.mark.parametrize("spec", LOAD_TRACKING)
def test_a_load_indexed_pick_reads_a_constant_number_of_backends(spec: str) -> None:
    rng = random.Random(4)
    routing = [CountingBackend(f"b{i}", rng.randint(1, 5)) for i in range(1000)]
    strategy: Strategy = build(spec, {})
    for _ in range(3):
        strategy.pick(routing, NO_FACTS)
    CountingBackend.reads = 0
    for _ in range(1000):
        backend = strategy.pick(routing, NO_FACTS)
        assert backend is not None
        backend.in_flight += 1
        backend.sessions += 1
        strategy.load_changed(backend)
    assert CountingBackend.reads <= 4 * 1000  # a scan would read 1,000,000
