"""Tests for the strategy interface, smooth weighted round-robin, and the strategy registry."""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcplb.strategies import registry
from mcplb.strategies.base import NO_FACTS, BackendView, RequestFacts, Strategy, StrategyOptionError
from mcplb.strategies.ip_hash import IpHash
from mcplb.strategies.least_connections import LeastConnections
from mcplb.strategies.least_loaded import LeastLoaded
from mcplb.strategies.least_sessions import LeastSessions
from mcplb.strategies.power_of_two import PowerOfTwo
from mcplb.strategies.random_choice import RandomChoice
from mcplb.strategies.registry import StrategyLoadError, build, resolve
from mcplb.strategies.round_robin import RoundRobin
from tests.support import plugin_strategies

REQUEST = RequestFacts(client_address="127.0.0.1", method="POST", path="/mcp", headers=[])


@dataclass
class FakeBackend:
    """The smallest thing that satisfies BackendView."""

    name: str
    weight: int = 1
    in_flight: int = 0
    available: bool = True
    streams: int = 0
    sessions: int = 0
    max_sessions: int | None = None

    @property
    def base_weight(self) -> int:
        return self.weight


def _as_view(backend: FakeBackend) -> BackendView:
    return backend  # type-checks only if FakeBackend satisfies the protocol


def backends(**weights: int) -> list[FakeBackend]:
    return [FakeBackend(name, weight) for name, weight in weights.items()]


def picks(strategy: Strategy, pool: Sequence[FakeBackend], n: int) -> list[str]:
    names = []
    for _ in range(n):
        chosen = strategy.pick(pool, REQUEST)
        assert chosen is not None
        names.append(chosen.name)
    return names


def longest_run(seq: Iterable[str], name: str) -> int:
    return max(
        (len(list(group)) for key, group in itertools.groupby(seq) if key == name), default=0
    )


# -- the fake and the base class ---------------------------------------------------------


def test_fake_backend_satisfies_backend_view() -> None:
    view = _as_view(FakeBackend("a", 3, 2, False, streams=1, sessions=4, max_sessions=5))
    assert (view.name, view.weight, view.in_flight, view.available) == ("a", 3, 2, False)
    assert (view.streams, view.sessions, view.max_sessions) == (1, 4, 5)


def test_strategy_base_rejects_unknown_options_by_name() -> None:
    with pytest.raises(StrategyOptionError, match=r"unknown option\(s\): alpha, zeta"):
        RoundRobin(zeta=1, alpha=2)


def test_request_facts_header_returns_first_value_or_none() -> None:
    facts = RequestFacts("1.2.3.4", "GET", "/", [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-a", b"3")])
    assert facts.header(b"x-a") == b"1"
    assert facts.header(b"x-b") == b"2"
    assert facts.header(b"x-c") is None


# -- round robin -------------------------------------------------------------------------


def test_round_robin_matches_nginx_sequence_for_5_1_1() -> None:
    # nginx's documented example: weights a=5, b=1, c=1 give "a a b a c a a".
    # By hand: scores start (0,0,0); each pick adds (5,1,1) and subtracts 7 from the winner.
    #   (5,1,1)->a (-2,1,1); (3,2,2)->a (-4,2,2); (1,3,3)->b (1,-4,3); (6,-3,4)->a (-1,-3,4);
    #   (4,-2,5)->c (4,-2,-2); (9,-1,-1)->a (2,-1,-1); (7,0,0)->a (0,0,0): back to the start.
    strategy = RoundRobin()
    pool = backends(a=5, b=1, c=1)
    assert picks(strategy, pool, 7) == list("aabacaa")
    # The state returned to all zeros, so the next cycle is identical.
    assert picks(strategy, pool, 7) == list("aabacaa")


def test_round_robin_equal_weights_cycle_in_list_order() -> None:
    strategy = RoundRobin()
    assert picks(strategy, backends(a=1, b=1, c=1), 9) == list("abcabcabc")
    strategy = RoundRobin()
    assert picks(strategy, backends(x=2, y=2), 6) == list("xyxyxy")


def test_round_robin_share_over_many_picks_matches_weights() -> None:
    weights = {"a": 1, "b": 2, "c": 3, "d": 4}
    total = sum(weights.values())
    strategy = RoundRobin()
    n = 100_000
    counts = Counter(picks(strategy, backends(**weights), n))
    assert set(counts) == set(weights)
    for name, weight in weights.items():
        share = counts[name] / n
        assert abs(share - weight / total) < 0.01, (name, share)
        # n is a multiple of the cycle length, so the split is in fact exact.
        assert counts[name] == n // total * weight


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 5, "b": 1, "c": 1},
        {"a": 7, "b": 3},
        {"a": 4, "b": 3, "c": 2, "d": 1},
        {"a": 9, "b": 2, "c": 1},
        {"a": 10, "b": 1},
        {"a": 3, "b": 3, "c": 3},
        {"a": 6, "b": 4, "c": 1},
    ],
)
def test_round_robin_one_cycle_is_exact_and_smooth(weights: dict[str, int]) -> None:
    total = sum(weights.values())
    strategy = RoundRobin()
    cycle = picks(strategy, backends(**weights), total)
    assert Counter(cycle) == Counter(weights)
    heaviest = max(weights, key=lambda name: weights[name])
    others = total - weights[heaviest]
    assert longest_run(cycle, heaviest) <= math.ceil(weights[heaviest] / others)
    # The algorithm is periodic: the next cycle repeats the first one exactly.
    assert picks(strategy, backends(**weights), total) == cycle


def test_round_robin_never_picks_weight_zero() -> None:
    strategy = RoundRobin()
    pool = backends(a=0, b=2, c=0, d=1)
    counts = Counter(picks(strategy, pool, 300))
    assert counts == Counter({"b": 200, "d": 100})


def test_round_robin_skips_unavailable_and_keeps_proportions() -> None:
    strategy = RoundRobin()
    a, b, c = FakeBackend("a", 3), FakeBackend("b", 5), FakeBackend("c", 1)
    b.available = False
    counts = Counter(picks(strategy, [a, b, c], 4000))
    assert counts == Counter({"a": 3000, "c": 1000})


def test_round_robin_proportions_hold_after_a_backend_goes_down_mid_cycle() -> None:
    strategy = RoundRobin()
    a, b, c = FakeBackend("a", 3), FakeBackend("b", 5), FakeBackend("c", 1)
    picks(strategy, [a, b, c], 7)  # leave the scores mid-cycle
    b.available = False
    counts = Counter(picks(strategy, [a, b, c], 4000))
    assert set(counts) == {"a", "c"}
    assert abs(counts["a"] - 3000) <= 1
    assert abs(counts["c"] - 1000) <= 1
    # When b comes back it gets its share again, without a burst of stale credit.
    b.available = True
    window = picks(strategy, [a, b, c], 9)
    assert 4 <= Counter(window)["b"] <= 6


def test_round_robin_returns_none_when_nothing_is_eligible() -> None:
    strategy = RoundRobin()
    assert strategy.pick([], REQUEST) is None
    down = [FakeBackend("a", 2, available=False), FakeBackend("b", 1, available=False)]
    assert strategy.pick(down, REQUEST) is None
    assert strategy.pick(backends(a=0, b=0), REQUEST) is None
    assert strategy.pick([FakeBackend("a", -1)], REQUEST) is None
    # A None pick leaves the strategy usable.
    assert strategy.pick(backends(a=1), REQUEST) is not None


def test_round_robin_instances_do_not_share_state() -> None:
    pool = backends(a=2, b=1)
    first, second = RoundRobin(), RoundRobin()
    assert picks(first, pool, 2) == ["a", "b"]
    assert picks(second, pool, 3) == ["a", "b", "a"]


backend_lists = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.integers(0, 20), st.booleans()),
    max_size=8,
    unique_by=lambda item: item[0],
).map(lambda items: [FakeBackend(name, weight, 0, up) for name, weight, up in items])


@settings(max_examples=200, deadline=None)
@given(pool=backend_lists, flips=st.lists(st.integers(0, 7), max_size=20))
def test_round_robin_pick_is_always_eligible_or_none(
    pool: list[FakeBackend], flips: list[int]
) -> None:
    strategy = RoundRobin()
    for flip in [None, *flips]:
        if flip is not None and pool:
            target = pool[flip % len(pool)]
            target.available = not target.available
        eligible = [b for b in pool if b.available and b.weight > 0]
        chosen = strategy.pick(pool, REQUEST)
        if eligible:
            assert chosen is not None
            assert any(chosen is b for b in eligible)
        else:
            assert chosen is None


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(1, 20), min_size=1, max_size=8))
def test_round_robin_any_full_cycle_gives_each_backend_exactly_its_weight(
    weights: list[int],
) -> None:
    pool = [FakeBackend(f"b{i}", w) for i, w in enumerate(weights)]
    strategy = RoundRobin()
    total = sum(weights)
    counts = Counter(picks(strategy, pool, total))
    assert counts == Counter({f"b{i}": w for i, w in enumerate(weights)})


# -- registry ----------------------------------------------------------------------------

PLUGIN = "tests.support.plugin_strategies"


def test_resolve_builtin_round_robin() -> None:
    assert resolve("round_robin") is RoundRobin
    assert isinstance(build("round_robin", {}), RoundRobin)


def test_build_rejects_unknown_option_and_names_it() -> None:
    with pytest.raises(StrategyLoadError, match="bogus") as info:
        build("round_robin", {"bogus": 1})
    assert "round_robin" in str(info.value)


def test_build_reports_missing_required_option_as_load_error() -> None:
    with pytest.raises(StrategyLoadError, match="bad options") as info:
        build(f"{PLUGIN}:NeedsOption", {})
    assert "prefer" in str(info.value)
    strategy = build(f"{PLUGIN}:NeedsOption", {"prefer": "b"})
    assert isinstance(strategy, plugin_strategies.NeedsOption)
    chosen = strategy.pick(backends(a=1, b=1), REQUEST)
    assert chosen is not None and chosen.name == "b"


def test_path_spec_loads_a_user_class_that_picks() -> None:
    assert resolve(f"{PLUGIN}:FirstAvailable") is plugin_strategies.FirstAvailable
    strategy = build(f"{PLUGIN}:FirstAvailable", {})
    assert isinstance(strategy, plugin_strategies.FirstAvailable)
    pool = [FakeBackend("a", 1, available=False), FakeBackend("b", 0), FakeBackend("c", 1)]
    chosen = strategy.pick(pool, REQUEST)
    assert chosen is pool[2]
    assert strategy.pick(pool[:2], REQUEST) is None
    with pytest.raises(StrategyLoadError, match="unknown option"):
        build(f"{PLUGIN}:FirstAvailable", {"speed": "fast"})


@pytest.mark.parametrize(
    "cls", [Strategy, LeastLoaded, plugin_strategies.Unfinished, plugin_strategies.UnfinishedLoad]
)
def test_a_class_with_an_abstract_method_left_cannot_be_instantiated(cls: type[Strategy]) -> None:
    # Strategy is no ABC (see strategies/base.py), so both builds check this themselves.
    with pytest.raises(TypeError, match="Can't instantiate abstract class"):
        cls()


def test_a_plugin_subclass_of_a_builtin_overrides_what_its_pick_calls() -> None:
    # In the compiled build LeastConnections is a native class: its pick() and the load
    # index call load() natively, and must reach the plugin's Python override.
    strategy = build(f"{PLUGIN}:IdleByName", {})
    assert isinstance(strategy, LeastConnections)
    assert strategy.name == "idle_by_name" and strategy.tracks_load
    pool = [FakeBackend("a", in_flight=1), FakeBackend("idle-b", in_flight=5)]
    assert [strategy.pick(pool, REQUEST) for _ in range(3)] == [pool[1]] * 3
    many = [FakeBackend(f"n{i}", in_flight=1) for i in range(20)] + [pool[1]]
    for _ in range(3):  # a list passed again is indexed by load (LoadIndex)
        assert strategy.pick(many, REQUEST) is pool[1]
    strategy.load_changed(many[0])
    assert strategy.pick(many, REQUEST) is pool[1]


def test_isinstance_between_strategy_classes_is_exact_in_any_order() -> None:
    # With an ABC as base, the compiled build's native classes would share abc.ABC's
    # subclass cache, and the first answer for a class would stand for every later one.
    classes: list[type[object]] = [Strategy, LeastLoaded, *registry.BUILTIN.values()]
    for first, second in itertools.permutations(classes, 2):
        assert issubclass(first, second) == (second in first.__mro__), (first, second)
    instances = [cls() for cls in registry.BUILTIN.values()]
    for instance, cls in itertools.product(instances, classes):
        assert isinstance(instance, cls) == (cls in type(instance).__mro__), (instance, cls)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no_such_module_mcplb_xyz:Thing", ["cannot import", "no_such_module_mcplb_xyz"]),
        (f"{PLUGIN}:Missing", ["no attribute", "Missing", PLUGIN]),
        (f"{PLUGIN}:NotAStrategy", ["not a subclass", "Strategy", "NotAStrategy"]),
        (f"{PLUGIN}:Unfinished", ["does not implement pick()", "Unfinished"]),
        (f"{PLUGIN}:UnfinishedLoad", ["does not implement load()", "UnfinishedLoad"]),
        (f"{PLUGIN}:plain_function", ["not a subclass", "plain_function"]),
        (f"{PLUGIN}:NOT_A_CLASS", ["not a subclass", "NOT_A_CLASS"]),
        ("os:path", ["not a subclass"]),
        (f"{PLUGIN}:FirstAvailable:extra", ["no attribute", "FirstAvailable:extra"]),
        ("a:b:c", ["cannot import", "'a'"]),
        (":FirstAvailable", ["expected 'package.module:ClassName'"]),
        (f"{PLUGIN}:", ["expected 'package.module:ClassName'"]),
        (":", ["expected 'package.module:ClassName'"]),
        ("no_such_strategy", ["unknown strategy", "no_such_strategy", "built-in", "round_robin"]),
        ("Round_Robin", ["unknown strategy", "round_robin"]),
    ],
)
def test_resolve_errors_are_load_errors_with_helpful_messages(spec: str, words: list[str]) -> None:
    with pytest.raises(StrategyLoadError) as info:
        resolve(spec)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    # The same errors surface through build().
    with pytest.raises(StrategyLoadError):
        build(spec, {})


@pytest.mark.parametrize(
    ("source", "raised"),
    [
        pytest.param(
            "raise RuntimeError('plugin blew up at import')\n",
            RuntimeError,
            id="runtime-error",
        ),
        pytest.param(
            "def broken(:\n",
            SyntaxError,
            id="syntax-error",
        ),
    ],
)
def test_path_spec_to_module_that_fails_on_import_is_a_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, raised: type[Exception]
) -> None:
    module = f"mcplb_broken_plugin_{raised.__name__.lower()}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(StrategyLoadError, match=module):
        resolve(f"{module}:Anything")


class FakeEntryPoints:
    """Stands in for importlib.metadata.entry_points and records the groups asked for."""

    def __init__(self, *entries: EntryPoint) -> None:
        self.entries = entries
        self.groups: list[str] = []

    def __call__(self, *, group: str) -> list[EntryPoint]:
        self.groups.append(group)
        return [e for e in self.entries if e.group == group]


def entry(name: str, value: str, group: str = "mcplb.strategies") -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


def test_entry_point_plugin_resolves_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEntryPoints(
        entry("other", f"{PLUGIN}:NotAStrategy"),
        entry("first", f"{PLUGIN}:FirstAvailable"),
    )
    monkeypatch.setattr(registry, "entry_points", fake)
    assert resolve("first") is plugin_strategies.FirstAvailable
    assert fake.groups == ["mcplb.strategies"]
    strategy = build("first", {})
    pool = [FakeBackend("a", 1, available=False), FakeBackend("b", 1)]
    assert strategy.pick(pool, REQUEST) is pool[1]


def test_entry_point_in_another_group_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEntryPoints(entry("first", f"{PLUGIN}:FirstAvailable", group="other.group"))
    monkeypatch.setattr(registry, "entry_points", fake)
    with pytest.raises(StrategyLoadError, match="unknown strategy 'first'"):
        resolve("first")


def test_entry_point_that_fails_to_load_is_a_load_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeEntryPoints(
        entry("gone", "no_such_module_mcplb_xyz:Thing"),
        entry("noattr", f"{PLUGIN}:Missing"),
    )
    monkeypatch.setattr(registry, "entry_points", fake)
    for name in ("gone", "noattr"):
        with pytest.raises(StrategyLoadError) as info:
            resolve(name)
        message = str(info.value)
        assert "entry point" in message and repr(name) in message
        assert "failed to load" in message


def test_entry_point_to_a_non_strategy_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEntryPoints(
        entry("fake", f"{PLUGIN}:NotAStrategy"), entry("abstract", f"{PLUGIN}:Unfinished")
    )
    monkeypatch.setattr(registry, "entry_points", fake)
    with pytest.raises(StrategyLoadError, match="not a subclass"):
        resolve("fake")
    with pytest.raises(StrategyLoadError, match=r"does not implement pick\(\)"):
        resolve("abstract")


def test_builtin_name_wins_over_a_same_named_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeEntryPoints(entry("round_robin", f"{PLUGIN}:FirstAvailable"))
    monkeypatch.setattr(registry, "entry_points", fake)
    assert resolve("round_robin") is RoundRobin
    assert fake.groups == []


def test_unknown_name_lists_builtins_even_with_plugins_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeEntryPoints(entry("first", f"{PLUGIN}:FirstAvailable"))
    monkeypatch.setattr(registry, "entry_points", fake)
    with pytest.raises(
        StrategyLoadError,
        match=r"unknown strategy 'nope' \(built-in: ip_hash, least_connections, "
        r"least_sessions, power_of_two, random, round_robin\)",
    ):
        resolve("nope")


# -- the load-aware and random strategies -------------------------------------------------

WEIGHTS = {"a": 1, "b": 2, "c": 3, "d": 4}
N_PICKS = 100_000


def assert_shares_match_weights(counts: Counter[str], weights: dict[str, int]) -> None:
    """Each backend's share of the picks is within 1 percentage point of weight/total."""
    n = sum(counts.values())
    total = sum(weights.values())
    assert set(counts) <= set(weights)
    for name, weight in weights.items():
        share = counts[name] / n
        assert abs(share - weight / total) < 0.01, (name, share, weight / total)


def simulate_fifo_load(
    strategy: Strategy, pool: list[FakeBackend], field: str, concurrency: int = 100
) -> Counter[str]:
    """N_PICKS picks, each adding 1 to ``field`` of the picked backend; once ``concurrency``
    are outstanding, the oldest is released (decremented) before the next pick.

    Every request lasts equally long, so by Little's law a backend's steady-state load is
    its share of the picks times ``concurrency``: balancing load per weight then gives
    shares proportional to weights.
    """
    outstanding: deque[FakeBackend] = deque()
    counts: Counter[str] = Counter()
    for _ in range(N_PICKS):
        chosen = strategy.pick(pool, NO_FACTS)
        assert chosen is not None
        counts[chosen.name] += 1
        setattr(chosen, field, getattr(chosen, field) + 1)
        outstanding.append(chosen)
        if len(outstanding) >= concurrency:
            oldest = outstanding.popleft()
            setattr(oldest, field, getattr(oldest, field) - 1)
    return counts


def test_least_connections_shares_match_weights_under_steady_load() -> None:
    # Simulated: 100 concurrent requests of equal duration (FIFO release).
    pool = backends(**WEIGHTS)
    counts = simulate_fifo_load(LeastConnections(), pool, "in_flight")
    assert_shares_match_weights(counts, WEIGHTS)
    # In the steady state the 99 held requests are split about 10/20/30/40: equal per weight.
    assert sum(b.in_flight for b in pool) == 99
    assert all(abs(b.in_flight - 10 * b.weight) <= 1 for b in pool), pool


def test_least_sessions_shares_match_weights_under_steady_load() -> None:
    # Simulated: 100 concurrent sessions of equal lifetime (FIFO release).
    pool = backends(**WEIGHTS)
    counts = simulate_fifo_load(LeastSessions(), pool, "sessions")
    assert_shares_match_weights(counts, WEIGHTS)


@pytest.mark.parametrize("cls", [RandomChoice, PowerOfTwo])
def test_random_strategies_shares_match_weights_at_equal_load(cls: type[Strategy]) -> None:
    # Equal load (all idle): power_of_two's comparison always ties and keeps the first
    # draw, so both reduce to a weighted random draw.
    counts = Counter(picks(cls(seed=7), backends(**WEIGHTS), N_PICKS))
    assert_shares_match_weights(counts, WEIGHTS)


def test_ip_hash_shares_match_weights_over_many_clients() -> None:
    strategy = IpHash()
    pool = backends(**WEIGHTS)
    counts: Counter[str] = Counter()
    for i in range(N_PICKS):
        facts = RequestFacts(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "GET", "/", ())
        chosen = strategy.pick(pool, facts)
        assert chosen is not None
        counts[chosen.name] += 1
    assert_shares_match_weights(counts, WEIGHTS)


def test_least_connections_prefers_the_least_loaded_per_weight() -> None:
    strategy = LeastConnections()
    a, b, c = FakeBackend("a", 1, 3), FakeBackend("b", 1, 1), FakeBackend("c", 1, 2)
    assert [strategy.pick([a, b, c], NO_FACTS) for _ in range(3)] == [b, b, b]
    # Per weight: 5 on weight 4 (1.25) beats 2 on weight 1 (2.0) and 3 on weight 2 (1.5).
    heavy = [FakeBackend("x", 1, 2), FakeBackend("y", 2, 3), FakeBackend("z", 4, 5)]
    assert strategy.pick(heavy, NO_FACTS) is heavy[2]


def test_least_connections_breaks_ties_by_rotation_not_list_order() -> None:
    strategy = LeastConnections()
    assert picks(strategy, backends(a=1, b=1, c=1), 7) == list("abcabca")
    # Only the tied (least loaded) backends take part in the rotation.
    strategy = LeastConnections()
    pool = [FakeBackend("a", 1, 5), FakeBackend("b"), FakeBackend("c", 1, 5), FakeBackend("d")]
    assert picks(strategy, pool, 4) == list("bdbd")
    # A tie in load per weight: 2/2 equals 1/1.
    strategy = LeastConnections()
    pool = [FakeBackend("a", 2, 2), FakeBackend("b", 1, 1)]
    assert picks(strategy, pool, 4) == list("abab")


def test_least_connections_does_not_count_open_streams() -> None:
    strategy = LeastConnections()
    # a holds 50 idle event streams and 1 real request; b has 2 real requests.
    a = FakeBackend("a", 1, in_flight=51, streams=50)
    b = FakeBackend("b", 1, in_flight=2)
    assert picks(strategy, [a, b], 3) == ["a", "a", "a"]
    a.in_flight = 53  # now 3 active: b is less loaded
    assert picks(strategy, [a, b], 2) == ["b", "b"]


def test_least_connections_skips_unavailable_and_weight_zero() -> None:
    strategy = LeastConnections()
    pool = [FakeBackend("a", 1, 9), FakeBackend("b", 0), FakeBackend("c", 1, available=False)]
    assert picks(strategy, pool, 3) == ["a", "a", "a"]
    pool[0].available = False
    assert strategy.pick(pool, NO_FACTS) is None
    assert strategy.pick([], NO_FACTS) is None


def test_power_of_two_starves_a_heavily_loaded_backend() -> None:
    strategy = PowerOfTwo(seed=1)
    pool = [FakeBackend("hot", 1, 100), *backends(b=1, c=1, d=1)]
    counts = Counter(picks(strategy, pool, 10_000))
    # hot is always compared with a distinct, less loaded backend, so it never wins.
    assert counts["hot"] == 0
    for name in "bcd":
        assert abs(counts[name] - 10_000 / 3) < 300, counts


def test_power_of_two_prefers_lower_load_per_weight_and_ignores_streams() -> None:
    strategy = PowerOfTwo(seed=3)
    # a: 4 active on weight 4 (1.0); b: 2 active on weight 1 (2.0), plus 100 idle streams on a.
    a = FakeBackend("a", 4, in_flight=104, streams=100)
    b = FakeBackend("b", 1, in_flight=2)
    assert Counter(picks(strategy, [a, b], 200)) == Counter({"a": 200})


def test_power_of_two_with_one_available_backend_returns_it() -> None:
    strategy = PowerOfTwo(seed=5)
    only = FakeBackend("only", 3, 1000)
    pool = [FakeBackend("down", 5, available=False), only, FakeBackend("zero", 0)]
    assert all(strategy.pick(pool, NO_FACTS) is only for _ in range(50))
    only.available = False
    assert strategy.pick(pool, NO_FACTS) is None


@pytest.mark.parametrize("cls", [RandomChoice, PowerOfTwo])
def test_seed_makes_random_strategies_reproducible(cls: type[Strategy]) -> None:
    pool = [FakeBackend("a", 1), FakeBackend("b", 2, 1), FakeBackend("c", 3, 2)]
    first = picks(cls(seed=42), pool, 200)
    assert picks(cls(seed=42), pool, 200) == first
    assert picks(cls(seed=43), pool, 200) != first


def test_random_skips_unavailable_and_weight_zero() -> None:
    strategy = RandomChoice(seed=0)
    pool = [FakeBackend("a", 1, available=False), FakeBackend("b", 0), FakeBackend("c", 2)]
    assert set(picks(strategy, pool, 100)) == {"c"}
    pool[2].weight = 0
    assert strategy.pick(pool, NO_FACTS) is None


def test_least_sessions_prefers_fewest_sessions_per_weight() -> None:
    strategy = LeastSessions()
    pool = [
        FakeBackend("a", 1, sessions=3),
        FakeBackend("b", 4, sessions=8),  # 2 per weight
        FakeBackend("c", 2, sessions=2, in_flight=50),  # 1 per weight; in-flight is ignored
    ]
    assert picks(strategy, pool, 2) == ["c", "c"]
    # Ties go round-robin.
    strategy = LeastSessions()
    assert picks(strategy, backends(a=1, b=1, c=1), 6) == list("abcabc")


def test_least_sessions_honours_max_sessions_and_returns_none_when_all_full() -> None:
    strategy = LeastSessions()
    a = FakeBackend("a", 1, sessions=0, max_sessions=2)
    b = FakeBackend("b", 1, sessions=5, max_sessions=6)
    seen = []
    for _ in range(3):
        chosen = strategy.pick([a, b], NO_FACTS)
        assert chosen is not None
        chosen.sessions += 1
        seen.append(chosen.name)
    # a takes two (it has fewer sessions), then is full; b takes its last free place.
    assert seen == ["a", "a", "b"]
    assert (a.sessions, b.sessions) == (2, 6)
    assert strategy.pick([a, b], NO_FACTS) is None  # every available backend is full
    b.sessions = 5  # a session ended on b
    assert strategy.pick([a, b], NO_FACTS) is b
    # max_sessions 0 never takes a session; None is unlimited.
    unlimited = FakeBackend("u", 1, sessions=10_000)
    assert strategy.pick([FakeBackend("z", 1, max_sessions=0), unlimited], NO_FACTS) is unlimited


def test_least_sessions_skips_unavailable_and_weight_zero() -> None:
    strategy = LeastSessions()
    pool = [FakeBackend("a", 1, sessions=9), FakeBackend("b", 0), FakeBackend("c", available=False)]
    assert picks(strategy, pool, 2) == ["a", "a"]
    assert strategy.pick(pool[1:], NO_FACTS) is None


def test_only_ip_hash_reads_the_request() -> None:
    flags = {name: cls.uses_request for name, cls in registry.BUILTIN.items()}
    assert flags == {
        "round_robin": False,
        "least_connections": False,
        "power_of_two": False,
        "random": False,
        "least_sessions": False,
        "ip_hash": True,
    }


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("random", {"seed": "x"}, "seed must be an integer, got 'x'"),
        ("random", {"seed": 1.5}, "seed must be an integer"),
        ("power_of_two", {"seed": True}, "seed must be an integer, got True"),
        ("power_of_two", {"sead": 1}, r"unknown option\(s\): sead"),
        ("least_connections", {"seed": 1}, r"unknown option\(s\): seed"),
        ("least_sessions", {"max": 1}, r"unknown option\(s\): max"),
        ("ip_hash", {"table_size": 100}, "table_size must be a prime >= 101"),
        ("ip_hash", {"table_size": 97}, "table_size must be a prime >= 101"),
        ("ip_hash", {"table_size": 65536}, "table_size must be a prime >= 101.*got 65536"),
        ("ip_hash", {"table_size": "65537"}, "table_size must be a prime"),
        ("ip_hash", {"table_size": True}, "table_size must be a prime"),
        (
            "ip_hash",
            {"table_size": 1_000_033},
            r"table_size must be a prime >= 101 \(and <= 1000003\)",
        ),
        ("ip_hash", {"trusted_proxies": "10.0.0.0/8"}, "trusted_proxies must be a list"),
        ("ip_hash", {"trusted_proxies": {"a": 1}}, "trusted_proxies must be a list"),
        (
            "ip_hash",
            {"trusted_proxies": ["10.0.0.0/8", "10.0.0.300/8"]},
            r"trusted_proxies\[1\]: '10.0.0.300/8' is not a valid network",
        ),
        ("ip_hash", {"trusted_proxies": [5]}, r"trusted_proxies\[0\]: 5 is not a valid network"),
        ("ip_hash", {"trusted_proxies": ["proxy.local"]}, r"trusted_proxies\[0\]: 'proxy.local'"),
        ("ip_hash", {"hash_key": "cookie:sid"}, 'hash_key must be "address" or "header:NAME"'),
        ("ip_hash", {"hash_key": "header:"}, "hash_key must be"),
        ("ip_hash", {"hash_key": "header:x user"}, "hash_key must be"),
        ("ip_hash", {"hash_key": 3}, "hash_key must be"),
        ("ip_hash", {"salt": 1}, r"unknown option\(s\): salt"),
    ],
)
def test_invalid_options_raise_errors_naming_the_option(
    spec: str, options: dict[str, Any], message: str
) -> None:
    cls = resolve(spec)
    with pytest.raises(StrategyOptionError, match=message):
        cls(**options)
    with pytest.raises(StrategyLoadError, match=f"{spec}: {message}"):
        build(spec, options)


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        ("random", {"seed": 0}),
        ("random", {"seed": None}),
        ("power_of_two", {"seed": -5}),
        ("ip_hash", {"table_size": 101}),
        ("ip_hash", {"table_size": 1_000_003}),
        ("ip_hash", {"trusted_proxies": ["10.0.0.0/8", " 192.168.1.1 ", "::1", "fd00::/8"]}),
        ("ip_hash", {"trusted_proxies": []}),
        ("ip_hash", {"hash_key": "address"}),
        ("ip_hash", {"hash_key": "header:X-User-Id"}),
    ],
)
def test_valid_options_are_accepted(spec: str, options: dict[str, Any]) -> None:
    assert isinstance(build(spec, options), resolve(spec))


# -- every built-in strategy ---------------------------------------------------------------


def test_registry_resolves_every_builtin_by_name() -> None:
    expected = {
        "round_robin": RoundRobin,
        "least_connections": LeastConnections,
        "power_of_two": PowerOfTwo,
        "random": RandomChoice,
        "least_sessions": LeastSessions,
        "ip_hash": IpHash,
    }
    assert dict(registry.BUILTIN) == expected
    for name, cls in expected.items():
        assert cls.name == name
        assert resolve(name) is cls
        assert type(build(name, {})) is cls


def never_full(backend: FakeBackend) -> bool:
    return True


def has_room(backend: FakeBackend) -> bool:
    return backend.max_sessions is None or backend.sessions < backend.max_sessions


# What each strategy may pick beyond "available with weight > 0".
ROOM: dict[str, Callable[[FakeBackend], bool]] = {"least_sessions": has_room}
# Options for the property tests: ip_hash's smallest table keeps each build fast.
PROPERTY_CASES: list[tuple[str, dict[str, Any]]] = [
    *((name, {"table_size": 101} if name == "ip_hash" else {}) for name in registry.BUILTIN),
    ("ip_hash", {"table_size": 101, "trusted_proxies": ["10.0.0.0/8", "::1"]}),
    ("ip_hash", {"table_size": 101, "hash_key": "header:x-user"}),
]


def test_property_cases_cover_every_builtin() -> None:
    assert {name for name, _ in PROPERTY_CASES} == set(registry.BUILTIN)


full_backends = st.lists(
    st.builds(
        FakeBackend,
        name=st.text(min_size=1, max_size=8),
        weight=st.integers(-2, 20),
        in_flight=st.integers(0, 30),
        available=st.booleans(),
        streams=st.integers(0, 30),
        sessions=st.integers(0, 30),
        max_sessions=st.none() | st.integers(0, 30),
    ),
    max_size=8,
    unique_by=lambda backend: backend.name,
)
requests = st.builds(
    RequestFacts,
    client_address=st.sampled_from(["10.0.0.1", "10.9.9.9", "::1", "203.0.113.7", "", "unix"])
    | st.text(max_size=20),
    method=st.just("POST"),
    path=st.just("/mcp"),
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"x-forwarded-for", b"x-user", b"host"]),
            st.sampled_from([b"1.2.3.4", b"10.0.0.2, 9.9.9.9", b"", b" , ,", b"[::1]:80"])
            | st.binary(max_size=20),
        ),
        max_size=3,
    ),
)


@pytest.mark.parametrize(
    ("spec", "options"),
    PROPERTY_CASES,
    ids=[f"{spec}-{'-'.join(options) or 'defaults'}" for spec, options in PROPERTY_CASES],
)
@settings(max_examples=100, deadline=None)
@given(
    pool=full_backends,
    steps=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["available", "load"]))),
    request=requests,
)
def test_every_strategy_picks_an_eligible_backend_or_none(
    spec: str,
    options: dict[str, Any],
    pool: list[FakeBackend],
    steps: list[tuple[int, str]],
    request: RequestFacts,
) -> None:
    strategy = build(spec, options)
    room = ROOM.get(spec, never_full)
    for step in [None, *steps[:12]]:
        if step is not None and pool:
            target = pool[step[0] % len(pool)]
            if step[1] == "available":
                target.available = not target.available
            else:
                target.in_flight += 1
                target.sessions += 1
        eligible = [b for b in pool if b.available and b.weight > 0 and room(b)]
        chosen = strategy.pick(pool, request)
        if eligible:
            assert chosen is not None
            assert any(chosen is b for b in eligible)
        else:
            assert chosen is None
