"""Tests for the strategy interface, smooth weighted round-robin, and the strategy registry."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import registry
from strategies.base import BackendView, RequestFacts, Strategy, StrategyOptionError
from strategies.registry import StrategyLoadError, build, resolve
from strategies.round_robin import RoundRobin
from tests import plugin_strategies

REQUEST = RequestFacts(client_address="127.0.0.1", method="POST", path="/mcp", headers=[])


@dataclass
class FakeBackend:
    """The smallest thing that satisfies BackendView."""

    name: str
    weight: int = 1
    in_flight: int = 0
    available: bool = True


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
    view = _as_view(FakeBackend("a", weight=3, in_flight=2, available=False))
    assert (view.name, view.weight, view.in_flight, view.available) == ("a", 3, 2, False)


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

PLUGIN = "tests.plugin_strategies"


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
    ("spec", "words"),
    [
        ("no_such_module_mcplb_xyz:Thing", ["cannot import", "no_such_module_mcplb_xyz"]),
        (f"{PLUGIN}:Missing", ["no attribute", "Missing", PLUGIN]),
        (f"{PLUGIN}:NotAStrategy", ["not a subclass", "Strategy", "NotAStrategy"]),
        (f"{PLUGIN}:Unfinished", ["does not implement pick()", "Unfinished"]),
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
        StrategyLoadError, match=r"unknown strategy 'nope' \(built-in: round_robin\)"
    ):
        resolve("nope")
