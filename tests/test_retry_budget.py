"""The retry policy without I/O: RetryBudget on an explicit clock, and may_retry's matrix."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mcplb.proxy.cluster.retry_budget import BUDGET_FLOOR, BUDGET_WINDOW, RetryBudget
from mcplb.proxy.config.schema import RetriesConfig, RetryCondition
from mcplb.proxy.routing.retries import may_retry

T0 = 1000.0  # a loop clock some way in; a whole second, so T0 + x falls in second 1000 + x


def retries_allowed(budget: RetryBudget, now: float, limit: int = 10_000) -> int:
    """Retries granted at ``now`` until the first refusal (bounded)."""
    for granted in range(limit):
        if not budget.try_retry(now):
            return granted
    raise AssertionError(f"no refusal within {limit} retries")


def test_window_and_floor_constants() -> None:
    # The numbers the docs and the end-to-end tests rely on.
    assert (BUDGET_WINDOW, BUDGET_FLOOR) == (10, 10)


def test_quiet_window_allows_the_floor() -> None:
    budget = RetryBudget(20.0)
    assert retries_allowed(budget, T0) == BUDGET_FLOOR
    # Refusals are not counted: a request later still leaves the budget spent, not overdrawn.
    budget.record_request(T0 + 0.5)
    assert not budget.try_retry(T0 + 0.5)


def test_share_of_the_request_rate() -> None:
    budget = RetryBudget(20.0)
    for i in range(1000):
        budget.record_request(T0 + i * 0.005)  # seconds 1000..1004
    assert retries_allowed(budget, T0 + 5.0) == 200


def test_the_201st_retry_is_refused_even_spread_over_seconds() -> None:
    budget = RetryBudget(20.0)
    for i in range(1000):
        budget.record_request(T0 + i * 0.005)
    granted = [budget.try_retry(T0 + 5.0 + i * 0.02) for i in range(201)]  # seconds 1005..1009
    assert granted == [True] * 200 + [False]


def test_a_fractional_share_rounds_up() -> None:
    # 52 requests x 20% = 10.4: a retry is allowed while fewer than 10.4 were made: 11.
    budget = RetryBudget(20.0)
    for _ in range(52):
        budget.record_request(T0)
    assert retries_allowed(budget, T0) == 11
    # 50 x 20% = 10 exactly: the floor, no more.
    budget = RetryBudget(20.0)
    for _ in range(50):
        budget.record_request(T0)
    assert retries_allowed(budget, T0) == 10


def test_percent_zero_still_allows_the_floor() -> None:
    budget = RetryBudget(0.0)
    for _ in range(1000):
        budget.record_request(T0)
    assert retries_allowed(budget, T0) == BUDGET_FLOOR


def test_percent_hundred_matches_requests() -> None:
    budget = RetryBudget(100.0)
    for _ in range(37):
        budget.record_request(T0)
    assert retries_allowed(budget, T0) == 37


def test_spent_retries_fall_out_of_the_window() -> None:
    budget = RetryBudget(20.0)
    assert retries_allowed(budget, T0 + 0.9) == BUDGET_FLOOR  # all in second 1000
    # Seconds 1000..1009 are the window up to the last instant of second 1009.
    assert not budget.try_retry(T0 + 9.999)
    # Second 1010: second 1000 is out, and with it every retry spent.
    assert retries_allowed(budget, T0 + BUDGET_WINDOW) == BUDGET_FLOOR


def test_old_requests_fall_out_of_the_window() -> None:
    budget = RetryBudget(20.0)
    for _ in range(1000):
        budget.record_request(T0)  # second 1000
    assert retries_allowed(budget, T0 + 5.0) == 200  # second 1005
    # Second 1010: the 1000 requests no longer count, the 200 retries still do.
    assert not budget.try_retry(T0 + 10.0)
    # Second 1015: both are gone; a quiet window again.
    assert retries_allowed(budget, T0 + 15.0) == BUDGET_FLOOR


def test_a_long_idle_gap_clears_everything() -> None:
    budget = RetryBudget(20.0)
    for _ in range(100):
        budget.record_request(T0)
    retries_allowed(budget, T0)
    # Slots are reused modulo the window: second 1030 shares second 1000's slot, 1021 others.
    assert retries_allowed(budget, T0 + 21.5) == BUDGET_FLOOR
    budget = RetryBudget(20.0)
    retries_allowed(budget, T0)
    assert retries_allowed(budget, T0 + 30.0) == BUDGET_FLOOR


def test_requests_fund_retries_for_a_window_after_them() -> None:
    """The budget looks back one window from each retry, so requests made in one window
    pay for retries up to ten seconds later: 200 retries in seconds 1009..1018 without a
    single request in those seconds. This is the slack the property below bounds."""
    budget = RetryBudget(20.0)
    for _ in range(1000):
        budget.record_request(T0 + 0.5)  # second 1000
    assert retries_allowed(budget, T0 + 9.5) == 200  # second 1009
    assert not budget.try_retry(T0 + 10.0)  # second 1010: requests gone, retries remain


def test_percent_can_change_at_runtime() -> None:
    # Runtime.reload assigns budget.percent; the next decision uses it.
    budget = RetryBudget(20.0)
    for _ in range(100):
        budget.record_request(T0)
    assert retries_allowed(budget, T0) == 20
    budget.percent = 50.0
    assert retries_allowed(budget, T0) == 30


# -- the property: the buckets against a model that keeps every event ---------------------

PERCENTS = (0.0, 1.0, 5.0, 12.5, 20.0, 50.0, 100.0)
STEP = st.one_of(
    st.floats(0.0, 0.3),
    st.floats(0.0, 3.0),
    st.sampled_from([0.0, 0.001, 0.999, 1.0, 9.0, 9.999, 10.0, 10.001, 19.0, 25.0]),
)
EVENT = st.tuples(STEP, st.sampled_from(["request", "retry"]), st.integers(1, 60))


@settings(max_examples=300, deadline=None)
@given(
    percent=st.sampled_from(PERCENTS),
    start=st.floats(0.0, 1e6),
    events=st.lists(EVENT, max_size=40),
)
def test_budget_matches_a_model_and_bounds_every_window(
    percent: float, start: float, events: list[tuple[float, str, int]]
) -> None:
    """Each decision equals the rule applied to the full history (retries in the
    whole seconds s-9..s before this one < max(10, requests in them x percent)), and so:

    - a window of ten whole seconds ending in a second where a retry was granted holds at
      most max(10, ceil(requests in it x percent)) retries: the floor, or the share rounded
      up (a retry is granted while fewer than the share were made, so one may cross it);
    - any window of ten whole seconds [a, a+9] holds at most
      max(10, ceil(requests in [a-9, a+9] x percent)): its retries may have been paid for by
      requests up to nine seconds before it (see test_requests_fund_retries_...).
    """
    share = Fraction(str(percent)) / 100
    budget = RetryBudget(percent)
    requests: list[int] = []  # second of every request
    granted: list[int] = []  # second of every retry granted
    now = start
    refused = 0
    for step, kind, count in events:
        now += step
        second = int(now)
        for _ in range(count):
            if kind == "request":
                budget.record_request(now)
                requests.append(second)
                continue
            window = range(second - BUDGET_WINDOW + 1, second + 1)
            made = sum(1 for s in granted if s in window)
            seen = sum(1 for s in requests if s in window)
            expected = made < max(Fraction(BUDGET_FLOOR), seen * share)
            assert budget.try_retry(now) is expected, (second, made, seen)
            if expected:
                granted.append(second)
            else:
                refused += 1

    event("some retries refused" if refused else "no retry refused")
    event("above the floor" if len(granted) > BUDGET_FLOOR else "within the floor")

    def in_seconds(seconds: list[int], first: int, last: int) -> int:
        return sum(1 for s in seconds if first <= s <= last)

    def cap(request_count: int) -> int:
        return max(BUDGET_FLOOR, math.ceil(request_count * share))

    for second in set(granted):
        first = second - BUDGET_WINDOW + 1
        assert in_seconds(granted, first, second) <= cap(in_seconds(requests, first, second))
    if granted:
        for a in range(min(granted) - BUDGET_WINDOW, max(granted) + 1):
            last = a + BUDGET_WINDOW - 1
            funding = in_seconds(requests, a - BUDGET_WINDOW + 1, last)
            assert in_seconds(granted, a, last) <= cap(funding)


# -- may_retry -----------------------------------------------------------------------------

CONDITIONS = ("connect_failure", "reset", "502", "503", "504")
METHODS = (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE", b"POST", b"PATCH")
# RFC 9110 section 9.2.2: a repeat has the same effect as one request. Not POST or PATCH
# (an MCP JSON-RPC call is a POST: it may run a tool twice).
SAFE_TO_REPEAT = {b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"}


def only(*conditions: RetryCondition) -> frozenset[RetryCondition]:
    """A ``retries.on`` set."""
    return frozenset(conditions)


ON_SETS = (
    only(),
    only("connect_failure", "reset"),  # the default
    only("connect_failure", "reset", "502", "503", "504"),
    only("503"),
)


@pytest.mark.parametrize(
    ("on", "condition", "method", "sent", "non_idempotent"),
    list(itertools.product(ON_SETS, CONDITIONS, METHODS, (False, True), (False, True))),
)
def test_may_retry_matrix(
    on: frozenset[RetryCondition],
    condition: str,
    method: bytes,
    sent: bool,
    non_idempotent: bool,
) -> None:
    config = RetriesConfig(on=on, non_idempotent=non_idempotent)
    if condition not in on:
        expected = False  # only the configured conditions are ever retried
    elif not sent:
        expected = True  # nothing reached a backend: any method may go elsewhere
    else:
        expected = non_idempotent or method in SAFE_TO_REPEAT
    assert may_retry(config, condition, method, sent) is expected


@pytest.mark.parametrize(
    ("config", "condition", "method", "sent", "expected"),
    [
        # The defaults: a refused connect moves even an MCP call; a reset moves only GETs.
        (RetriesConfig(), "connect_failure", b"POST", False, True),
        (RetriesConfig(), "reset", b"GET", True, True),
        (RetriesConfig(), "reset", b"POST", True, False),
        (RetriesConfig(), "reset", b"PATCH", True, False),
        (RetriesConfig(), "503", b"GET", True, False),  # statuses are opt-in
        (RetriesConfig(non_idempotent=True), "reset", b"POST", True, True),
        (RetriesConfig(on=only("503")), "503", b"GET", True, True),
        (RetriesConfig(on=only("503")), "504", b"GET", True, False),
        (RetriesConfig(on=only()), "connect_failure", b"GET", False, False),
        # Lower-case is not a method the proxy sees (httptools upper-cases), so not safe.
        (RetriesConfig(), "reset", b"get", True, False),
    ],
)
def test_may_retry_spelled_out(
    config: RetriesConfig, condition: str, method: bytes, sent: bool, expected: bool
) -> None:
    assert may_retry(config, condition, method, sent) is expected


def test_default_config() -> None:
    config = RetriesConfig()
    assert config.attempts == 2
    assert config.budget_percent == 20.0
    assert config.on == frozenset({"connect_failure", "reset"})
    assert config.non_idempotent is False
