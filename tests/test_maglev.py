"""Maglev lookup tables (strategies/maglev.py) and the ip_hash strategy built on them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from mcplb.strategies.base import RequestFacts
from mcplb.strategies.ip_hash import IpHash
from mcplb.strategies.maglev import build_table, is_prime, permutation
from tests.test_strategies import FakeBackend

M = 65537
N = 10
NAMES = [f"backend-{i}" for i in range(N)]
# 100,000 distinct client addresses, generated deterministically.
ADDRESSES = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)]
FACTS = [RequestFacts(address, "POST", "/mcp", ()) for address in ADDRESSES]


def pool(names: Sequence[str] = NAMES, weight: int = 1) -> list[FakeBackend]:
    return [FakeBackend(name, weight) for name in names]


def mapping(strategy: IpHash, backends: Sequence[FakeBackend]) -> list[str]:
    """The backend name each of the 100,000 addresses is sent to."""
    names = []
    for facts in FACTS:
        chosen = strategy.pick(backends, facts)
        assert chosen is not None
        names.append(chosen.name)
    return names


def facts(address: str, *headers: tuple[bytes, bytes]) -> RequestFacts:
    return RequestFacts(address, "POST", "/mcp", list(headers))


# -- the table builder ---------------------------------------------------------------------


def test_is_prime() -> None:
    primes = [2, 3, 5, 101, 65537, 1_000_003, 16_777_213]
    composites = [-7, 0, 1, 4, 9, 100, 65535, 65536, 1_000_001, 16_777_215]
    assert all(is_prime(n) for n in primes)
    assert not any(is_prime(n) for n in composites)


def test_permutation_visits_every_slot_of_a_prime_table() -> None:
    for name in ["a", "backend-7", "é"]:
        offset, skip = permutation(name, 101)
        assert 0 <= offset < 101 and 1 <= skip < 101
        assert {(offset + j * skip) % 101 for j in range(101)} == set(range(101))


def test_build_table_rejects_a_non_prime_size_and_no_positive_weight() -> None:
    with pytest.raises(ValueError, match="prime"):
        build_table([("a", 1)], 100)
    with pytest.raises(ValueError, match="positive weight"):
        build_table([("a", 0), ("b", -1)], 101)
    with pytest.raises(ValueError, match="positive weight"):
        build_table([], 101)


def test_build_table_is_full_and_deterministic() -> None:
    entries = [(name, 1) for name in NAMES]
    table = build_table(entries, M)
    assert len(table) == M
    assert set(table) == set(range(N))
    assert build_table(entries, M) == table


@pytest.mark.parametrize("count", [1, 3, 10, 100])
def test_equal_weights_own_equal_shares_of_the_table(count: int) -> None:
    table = build_table([(f"backend-{i}", 1) for i in range(count)], M)
    owned = Counter(table)
    # One turn each per round: ownership differs by at most the last, partial round.
    assert max(owned.values()) - min(owned.values()) <= 1
    assert all(abs(n - M / count) < 0.01 * M / count + 1 for n in owned.values())


@pytest.mark.parametrize("weights", [(1, 2, 3, 4), (1, 1, 1, 10), (5, 0, 5), (1, 100)])
def test_weights_skew_table_ownership_proportionally(weights: tuple[int, ...]) -> None:
    table = build_table([(f"b{i}", w) for i, w in enumerate(weights)], M)
    owned = Counter(table)
    total = sum(weights)
    for index, weight in enumerate(weights):
        # w turns per round: off by at most the turns of the last, partial round.
        assert abs(owned[index] - M * weight / total) <= weight, (index, owned)


def test_removing_an_entry_changes_few_slots_besides_its_own() -> None:
    entries = [(name, 1) for name in NAMES]
    before = [NAMES[i] for i in build_table(entries, M)]
    for removed in range(N):
        rest = entries[:removed] + entries[removed + 1 :]
        after = [rest[i][0] for i in build_table(rest, M)]
        changed = [slot for slot in range(M) if before[slot] != after[slot]]
        assert len(changed) <= (1 / N + 0.01) * M
        assert all(after[slot] != NAMES[removed] for slot in range(M))
        # Maglev trades strict minimal disruption for balance (paper, section 3.4): a few
        # slots of surviving entries change hands too, well under 1% of the table.
        collateral = sum(1 for slot in changed if before[slot] != NAMES[removed])
        assert collateral < 0.01 * M


# -- ip_hash: consistency ------------------------------------------------------------------


def test_a_backend_going_down_moves_only_its_own_keys_and_returning_restores_them() -> None:
    strategy = IpHash()
    backends = pool()
    before = mapping(strategy, backends)
    assert set(before) == set(NAMES)
    for down in (3, 7):
        backends[down].available = False
        after = mapping(strategy, backends)
        moved = [i for i in range(len(FACTS)) if after[i] != before[i]]
        assert len(moved) <= (1 / N + 0.01) * len(FACTS)
        # Every moved key was on the backend that went down, and all its keys moved.
        assert all(before[i] == NAMES[down] for i in moved)
        assert len(moved) == before.count(NAMES[down])
        # Its keys spread over the nine others, about evenly.
        spread = Counter(after[i] for i in moved)
        assert set(spread) == set(NAMES) - {NAMES[down]}
        assert all(abs(n / len(moved) - 1 / 9) < 0.02 for n in spread.values()), spread
        backends[down].available = True
        assert mapping(strategy, backends) == before


def test_removing_a_backend_from_the_list_moves_about_one_nth_and_readding_restores() -> None:
    strategy = IpHash()
    backends = pool()
    before = mapping(strategy, backends)
    removed = backends.pop(4)
    after = mapping(strategy, backends)
    moved = [i for i in range(len(FACTS)) if after[i] != before[i]]
    assert len(moved) <= (1 / N + 0.01) * len(FACTS)
    assert all(i in moved for i in range(len(FACTS)) if before[i] == removed.name)
    # A new list is a new Maglev table: near-minimal, not strictly minimal (see above).
    collateral = sum(1 for i in moved if before[i] != removed.name)
    assert collateral < 0.01 * len(FACTS)
    backends.insert(4, removed)
    assert mapping(strategy, backends) == before


def test_mapping_is_stable_across_instances_and_list_order() -> None:
    sample = slice(0, 20_000)
    first = mapping(IpHash(), pool())[sample]
    assert mapping(IpHash(), pool())[sample] == first
    assert mapping(IpHash(), pool(list(reversed(NAMES))))[sample] == first


# Computed once with this implementation: a change here would remap every client of every
# deployment on upgrade, so it must be deliberate.
GOLDEN = {
    "10.0.0.1": "backend-8",
    "192.168.7.23": "backend-0",
    "2001:db8::1": "backend-9",
    "203.0.113.9": "backend-7",
}


def test_mapping_matches_known_values() -> None:
    strategy = IpHash()
    backends = pool()
    for address, name in GOLDEN.items():
        chosen = strategy.pick(backends, facts(address))
        assert chosen is not None and chosen.name == name, address


def test_mapping_does_not_depend_on_python_hash_seed() -> None:
    root = Path(__file__).resolve().parent.parent
    script = (
        "from mcplb.strategies.base import RequestFacts\n"
        "from mcplb.strategies.ip_hash import IpHash\n"
        "from tests.test_strategies import FakeBackend\n"
        f"names, golden = {NAMES!r}, {GOLDEN!r}\n"
        "s, b = IpHash(), [FakeBackend(n) for n in names]\n"
        "picked = {a: s.pick(b, RequestFacts(a, 'GET', '/', ())) for a in golden}\n"
        "print(all(p is not None and p.name == golden[a] for a, p in picked.items()))\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True
        )
        assert result.stdout.strip() == "True", result.stderr


def test_tables_are_built_once_per_backend_set() -> None:
    # Read from the strategy's table cache, by (name, weight) entries: a table built again
    # would be a new object there. (Not counted by patching ip_hash's build_table: the
    # compiled build calls maglev.build_table directly.)
    strategy = IpHash(table_size=1009)
    abc, ac, abc2 = (
        (("a", 1), ("b", 1), ("c", 1)),
        (("a", 1), ("c", 1)),
        (("a", 1), ("b", 2), ("c", 1)),
    )
    backends = pool(["a", "b", "c"])
    for address in ADDRESSES[:300]:
        strategy.pick(backends, facts(address))
    first = dict(strategy._tables)
    assert list(first) == [abc]
    backends[1].available = False  # b's keys use a table over a and c
    for address in ADDRESSES[:300]:
        strategy.pick(backends, facts(address))
    second = dict(strategy._tables)
    assert set(second) == {abc, ac} and second[abc] is first[abc]
    backends[1].available = True
    retry = [backends[0], backends[2]]  # the relay's retry list, without the failed b
    for address in ADDRESSES[:300]:
        strategy.pick(backends, facts(address))
        strategy.pick(retry, facts(address))  # alternating lists reuse cached tables
    assert dict(strategy._tables) == second
    assert all(strategy._tables[entries] is second[entries] for entries in second)
    backends[1].weight = 2
    strategy.pick(backends, facts("10.0.0.1"))
    third = dict(strategy._tables)
    assert set(third) == {abc, ac, abc2}
    assert all(third[entries] is second[entries] for entries in second)


def test_weights_and_eligibility() -> None:
    strategy = IpHash(table_size=101)
    backends = [FakeBackend("a", 0), FakeBackend("b", 1), FakeBackend("c", 2, available=False)]
    assert all(strategy.pick(backends, f) is backends[1] for f in FACTS[:200])
    backends[1].available = False
    assert strategy.pick(backends, FACTS[0]) is None
    assert strategy.pick([], FACTS[0]) is None
    assert strategy.pick([FakeBackend("z", 0)], FACTS[0]) is None


# -- ip_hash: the key ----------------------------------------------------------------------

PROXIED = IpHash(trusted_proxies=["10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "key"),
    [
        # Without X-Forwarded-For, or from an untrusted peer, the socket peer is the client.
        ("10.1.1.1", [], "10.1.1.1"),
        ("203.0.113.5", [b"198.51.100.7"], "203.0.113.5"),
        ("::ffff:203.0.113.5", [b"198.51.100.7"], "::ffff:203.0.113.5"),
        # From a trusted peer: the first untrusted hop, right to left.
        ("10.1.1.1", [b"198.51.100.7"], "198.51.100.7"),
        ("10.1.1.1", [b"6.6.6.6, 198.51.100.7, 10.2.2.2"], "198.51.100.7"),
        ("10.1.1.1", [b"6.6.6.6, 198.51.100.7", b"10.2.2.2, 10.3.3.3"], "198.51.100.7"),
        ("10.1.1.1", [b"198.51.100.7 ,, 10.2.2.2 "], "198.51.100.7"),
        ("2001:db8::1", [b"2001:db9::5"], "2001:db9::5"),
        ("::ffff:10.1.1.1", [b"198.51.100.7"], "198.51.100.7"),  # IPv4-mapped peer
        # Ports and brackets are stripped; IPv4-mapped hops are read as IPv4.
        ("10.1.1.1", [b"198.51.100.7:4711"], "198.51.100.7"),
        ("10.1.1.1", [b"[2001:db9::5]:443"], "2001:db9::5"),
        ("10.1.1.1", [b"::ffff:198.51.100.7"], "198.51.100.7"),
        # Every hop trusted: the leftmost.
        ("10.1.1.1", [b"10.9.9.9, 10.2.2.2"], "10.9.9.9"),
        # A hop that is not an address is untrusted and used as it is.
        ("10.1.1.1", [b"unknown, 10.2.2.2"], "unknown"),
        ("10.1.1.1", [b" , "], "10.1.1.1"),
    ],
)
def test_trusted_proxies_take_the_client_from_x_forwarded_for(
    peer: str, forwarded: list[bytes], key: str
) -> None:
    headers = [(b"x-forwarded-for", value) for value in forwarded]
    request = facts(peer, (b"host", b"mcp.example"), *headers)
    assert PROXIED.key(request) == key.encode()
    # And the pick is the one for a direct connection from that client.
    backends = pool()
    assert PROXIED.pick(backends, request) is IpHash().pick(backends, facts(key))


def test_without_trusted_proxies_x_forwarded_for_is_ignored() -> None:
    request = facts("10.1.1.1", (b"x-forwarded-for", b"198.51.100.7"))
    assert IpHash().key(request) == b"10.1.1.1"


def test_hash_key_header_is_hashed_instead_of_the_address() -> None:
    strategy = IpHash(hash_key="header:X-Tenant")
    assert strategy.key(facts("10.0.0.1", (b"x-tenant", b"acme"))) == b"acme"
    assert strategy.key(facts("10.0.0.2", (b"x-tenant", b"acme"), (b"x-tenant", b"b"))) == b"acme"
    # Missing or empty: the address.
    assert strategy.key(facts("10.0.0.3")) == b"10.0.0.3"
    assert strategy.key(facts("10.0.0.3", (b"x-tenant", b""))) == b"10.0.0.3"
    # Every client of one tenant lands on one backend.
    backends = pool()
    tenant = (b"x-tenant", b"acme")
    assert len({id(strategy.pick(backends, facts(a, tenant))) for a in ADDRESSES[:500]}) == 1
    # The fallback to the address honours trusted_proxies.
    both = IpHash(hash_key="header:x-tenant", trusted_proxies=["10.0.0.0/8"])
    assert both.key(facts("10.0.0.3", (b"x-forwarded-for", b"1.2.3.4"))) == b"1.2.3.4"
