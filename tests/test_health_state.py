"""Health state machines and the monitor without I/O: fake clock, seeded Random."""

from __future__ import annotations

import dataclasses
import logging
import random

import pytest

from mcplb.healthcheck.monitor import HealthMonitor
from mcplb.healthcheck.state import ActiveState, OutlierDetector, SlowStart, Transition
from mcplb.proxy.cluster.backends import WEIGHT_SCALE, Backend
from mcplb.proxy.config.schema import ActiveHealthConfig, HealthConfig, PassiveHealthConfig
from tests.conftest import FakeClock, backend_config

LOGGER = "mcplb.health"


def active(**fields: object) -> ActiveHealthConfig:
    return dataclasses.replace(ActiveHealthConfig(enabled=True), **fields)  # type: ignore[arg-type]


# --- ActiveState: rise and fall -------------------------------------------------------------


def test_initial_healthy_falls_after_fall_failures_and_rises_after_rise_successes() -> None:
    state = ActiveState("a", active(rise=2, fall=3), "healthy")
    assert (state.healthy, state.up, state.label) == (None, True, "unknown")
    assert state.record(False, "connect refused") is None
    assert state.record(False, "connect refused") is None
    assert (state.up, state.label, state.failures) == (True, "unknown", 2)
    assert state.record(False, "connect refused") == Transition(
        "a",
        "unknown",
        "unhealthy",
        "active http check: 3 consecutive failures, last: connect refused",
    )
    assert (state.healthy, state.up, state.label) == (False, False, "unhealthy")
    assert state.record(True, "HTTP 200") is None
    assert state.up is False
    assert state.record(True, "HTTP 204") == Transition(
        "a", "unhealthy", "healthy", "active http check: 2 consecutive successes, last: HTTP 204"
    )
    assert (state.healthy, state.up, state.label) == (True, True, "healthy")


def test_initial_healthy_first_success_confirms_healthy() -> None:
    state = ActiveState("a", active(type="mcp"), "healthy")
    transition = state.record(True, "MCP ping ok")
    assert transition == Transition(
        "a", "unknown", "healthy", "active mcp check: passed, last: MCP ping ok"
    )
    assert not transition.down
    assert str(transition) == (
        "backend a: unknown -> healthy (active mcp check: passed, last: MCP ping ok)"
    )
    assert state.record(True, "MCP ping ok") is None


def test_initial_healthy_failures_then_success_confirm_healthy() -> None:
    state = ActiveState("a", active(fall=3), "healthy")
    assert state.record(False, "timeout after 1s") is None
    assert state.record(False, "timeout after 1s") is None
    transition = state.record(True, "HTTP 200")
    assert transition is not None
    assert (transition.old, transition.new) == ("unknown", "healthy")
    assert state.failures == 0


def test_initial_unhealthy_needs_rise_successes() -> None:
    state = ActiveState("a", active(rise=3), "unhealthy")
    assert (state.up, state.label) == (False, "unknown")
    assert state.record(True, "HTTP 200") is None
    assert state.record(True, "HTTP 200") is None
    assert state.up is False
    assert state.record(True, "HTTP 200") == Transition(
        "a", "unknown", "healthy", "active http check: 3 consecutive successes, last: HTTP 200"
    )
    assert state.up is True


def test_initial_unhealthy_first_failure_confirms_unhealthy() -> None:
    state = ActiveState("a", active(), "unhealthy")
    transition = state.record(False, "HTTP 503 (expected 200-399)")
    assert transition == Transition(
        "a", "unknown", "unhealthy", "active http check: failed, last: HTTP 503 (expected 200-399)"
    )
    assert transition.down


def test_interrupted_streaks_do_not_count() -> None:
    state = ActiveState("a", active(rise=2, fall=3), "healthy")
    assert state.record(True, "ok") is not None  # confirmed healthy
    for _ in range(5):
        assert state.record(False, "x") is None
        assert state.record(False, "x") is None
        assert state.record(True, "ok") is None  # resets the failure streak
    assert state.up
    assert state.record(False, "x") is None
    assert state.record(False, "x") is None
    transition = state.record(False, "x")
    assert transition is not None and transition.new == "unhealthy"
    for _ in range(5):
        assert state.record(True, "ok") is None
        assert state.record(False, "x") is None  # resets the success streak
    assert not state.up


def test_rise_and_fall_of_one() -> None:
    state = ActiveState("a", active(rise=1, fall=1), "healthy")
    assert state.record(False, "x") == Transition(
        "a", "unknown", "unhealthy", "active http check: 1 consecutive failure, last: x"
    )
    assert state.record(True, "y") == Transition(
        "a", "unhealthy", "healthy", "active http check: 1 consecutive success, last: y"
    )


# --- ActiveState: intervals ----------------------------------------------------------------


def in_band(value: float, base: float) -> bool:
    return base * 0.9 <= value <= base * 1.1


def test_intervals_normal_fast_and_down() -> None:
    rng = random.Random(1)
    state = ActiveState("a", active(interval=2, fast_interval=0.5, down_interval=10), "healthy")
    assert in_band(state.next_interval(rng), 2)  # unknown, nothing counted
    state.record(True, "ok")
    assert in_band(state.next_interval(rng), 2)
    state.record(False, "x")  # counting toward unhealthy
    assert state.counting
    assert in_band(state.next_interval(rng), 0.5)
    state.record(False, "x")
    state.record(False, "x")  # now unhealthy
    assert not state.counting
    assert in_band(state.next_interval(rng), 10)
    state.record(True, "ok")  # counting toward healthy
    assert in_band(state.next_interval(rng), 0.5)
    state.record(True, "ok")  # healthy again
    assert in_band(state.next_interval(rng), 2)


def test_intervals_without_fast_and_down_use_interval() -> None:
    rng = random.Random(2)
    state = ActiveState("a", active(interval=3), "healthy")
    for ok in (True, False, False, False, True):
        state.record(ok, "x")
        assert in_band(state.next_interval(rng), 3)


def test_interval_jitter_bounds() -> None:
    rng = random.Random(42)
    state = ActiveState("a", active(interval=2), "healthy")
    samples = [state.next_interval(rng) for _ in range(2000)]
    assert min(samples) >= 1.8
    assert max(samples) <= 2.2
    assert min(samples) < 1.82 and max(samples) > 2.18  # the whole band is used
    again = ActiveState("a", active(interval=2), "healthy")
    assert [again.next_interval(random.Random(42)) for _ in range(3)] == [samples[0]] * 3


# --- OutlierDetector -----------------------------------------------------------------------

PASSIVE = PassiveHealthConfig(
    consecutive_failures=5,
    ejection_time=30,
    max_ejection_time=300,
    ejection_memory=600,
    max_ejection_percent=50,
)


def test_ejects_after_consecutive_failures() -> None:
    outliers = OutlierDetector(PASSIVE, ["a", "b"])
    for _ in range(4):
        assert outliers.failure("a", "connect failed: refused", 100) is None
    assert outliers.failures("a") == 4
    transition = outliers.failure("a", "connect failed: refused", 101)
    assert transition == Transition(
        "a",
        "healthy",
        "ejected",
        "passive: 5 consecutive failures, last: connect failed: refused; ejected for 30s",
    )
    assert transition.down
    assert outliers.ejected("a") and not outliers.ejected("b")
    assert outliers.ejected_until("a") == 131
    assert outliers.failures("a") == 0
    assert outliers.failure("a", "timeout", 102) is None  # ignored while ejected
    assert outliers.failures("a") == 0


def test_success_resets_the_count() -> None:
    outliers = OutlierDetector(PASSIVE, ["a", "b"])
    for _ in range(3):
        for _ in range(4):
            assert outliers.failure("a", "timeout", 100) is None
        outliers.success("a")
        assert outliers.failures("a") == 0
    assert not outliers.ejected("a")


def test_expire_readmits_after_the_ejection_time() -> None:
    outliers = OutlierDetector(PASSIVE, ["a", "b"])
    for _ in range(5):
        outliers.failure("a", "timeout", 100)
    assert outliers.expire(129.9) == []
    assert outliers.ejected("a")
    assert outliers.expire(130) == [Transition("a", "ejected", "healthy", "ejection of 30s over")]
    assert not outliers.ejected("a")
    assert outliers.expire(1000) == []


def eject(outliers: OutlierDetector, name: str, now: float) -> Transition | None:
    result = None
    for _ in range(5):
        result = outliers.failure(name, "timeout", now)
    return result


def test_ejection_time_multiplies_within_memory_and_is_capped() -> None:
    cfg = dataclasses.replace(PASSIVE, max_ejection_time=70)
    outliers = OutlierDetector(cfg, ["a", "b"])
    lengths = []
    now = 0.0
    for _ in range(4):
        transition = eject(outliers, "a", now)
        assert transition is not None
        until = outliers.ejected_until("a")
        assert until is not None
        lengths.append(until - now)
        [back] = outliers.expire(until)
        assert back.reason == f"ejection of {until - now:g}s over"
        now = until + 1
    assert lengths == [30, 60, 70, 70]  # 30 x 1, 30 x 2, then capped at 70


def test_ejection_memory_forgets_old_ejections() -> None:
    outliers = OutlierDetector(PASSIVE, ["a", "b"])
    transition = eject(outliers, "a", 0)
    assert transition is not None and transition.reason.endswith("ejected for 30s")
    outliers.expire(30)
    transition = eject(outliers, "a", 100)  # the first is remembered: x2
    assert transition is not None
    assert transition.reason.endswith("ejected for 60s, ejection 2 within 600s")
    outliers.expire(160)
    transition = eject(outliers, "a", 650)  # the first (t=0) is forgotten, the second is not
    assert transition is not None and transition.reason.endswith(
        "ejected for 60s, ejection 2 within 600s"
    )
    outliers.expire(710)
    transition = eject(outliers, "a", 1400)  # both forgotten
    assert transition is not None and transition.reason.endswith("ejected for 30s")


def test_max_ejection_percent_refuses_an_ejection() -> None:
    outliers = OutlierDetector(PASSIVE, ["a", "b", "c", "d"])
    assert outliers.max_ejected == 2
    assert eject(outliers, "a", 0) is not None
    assert eject(outliers, "b", 1) is not None
    assert eject(outliers, "c", 2) is None  # a third of four would exceed 50%
    assert not outliers.ejected("c")
    assert outliers.refused == 1
    assert outliers.failures("c") == 5  # still counted
    assert outliers.failure("c", "timeout", 3) is None
    assert outliers.expire(30) == [Transition("a", "ejected", "healthy", "ejection of 30s over")]
    transition = outliers.failure("c", "timeout", 31)  # room again: the next failure ejects
    assert transition is not None
    assert transition.reason.startswith("passive: 7 consecutive failures")


@pytest.mark.parametrize(
    ("count", "percent", "allowed"),
    [(1, 50, 0), (1, 99, 0), (1, 100, 1), (2, 50, 1), (3, 50, 1), (5, 0, 0), (10, 33, 3)],
)
def test_max_ejection_percent_floor(count: int, percent: int, allowed: int) -> None:
    cfg = dataclasses.replace(PASSIVE, max_ejection_percent=percent)
    names = [f"b{i}" for i in range(count)]
    outliers = OutlierDetector(cfg, names)
    assert outliers.max_ejected == allowed
    assert sum(eject(outliers, name, 0) is not None for name in names) == allowed


def test_passive_disabled_never_ejects() -> None:
    outliers = OutlierDetector(dataclasses.replace(PASSIVE, enabled=False), ["a", "b"])
    assert eject(outliers, "a", 0) is None
    assert eject(outliers, "a", 0) is None
    assert not outliers.ejected("a")


def test_unknown_backend_is_ignored() -> None:
    outliers = OutlierDetector(PASSIVE, ["a", "b"])
    assert eject(outliers, "zzz", 0) is None
    outliers.success("zzz")


# --- SlowStart -----------------------------------------------------------------------------


def test_slow_start_off() -> None:
    slow = SlowStart(0)
    slow.start("a", 0)
    assert slow.factor("a", 0) == 1.0
    assert slow.ramping() == []


def test_slow_start_ramp() -> None:
    slow = SlowStart(10)
    assert slow.factor("a", 0) == 1.0  # not started
    slow.start("a", 100)
    assert slow.ramping() == ["a"]
    assert slow.factor("a", 100) == 0.01  # ~0, never 0
    assert slow.factor("a", 100.05) == 0.01
    assert slow.factor("a", 102.5) == pytest.approx(0.25)
    assert slow.factor("a", 107.5) == pytest.approx(0.75)
    assert slow.factor("a", 110) == 1.0
    assert slow.ramping() == []  # done: forgotten
    assert slow.factor("a", 105) == 1.0
    slow.start("b", 0)
    slow.stop("b")
    assert slow.factor("b", 1) == 1.0


# --- HealthMonitor without I/O -------------------------------------------------------------


def make_backends(*weights: int) -> list[Backend]:
    return [Backend(backend_config(f"b{i}", 9000 + i, weight)) for i, weight in enumerate(weights)]


def health(**fields: object) -> HealthConfig:
    return dataclasses.replace(HealthConfig(), **fields)  # type: ignore[arg-type]


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_monitor_passive_ejection_and_readmission(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    a, b = make_backends(1, 1)
    monitor = HealthMonitor(health(), [a, b], clock=clock)
    assert a.available and b.available
    for _ in range(4):
        monitor.connect_failed(a, "connection refused")
    assert a.available and not monitor.down(a)
    monitor.connect_failed(a, "connection refused")
    assert not a.available and monitor.down(a) and b.available
    monitor.connect_failed(a, "connection refused")  # ejected already: nothing more
    clock.advance(29.9)
    monitor.tick()
    assert not a.available
    clock.advance(0.1)
    monitor.tick()
    assert a.available and not monitor.down(a)
    monitor.tick()
    assert records(caplog) == [
        (
            logging.WARNING,
            "backend b0: healthy -> ejected (passive: 5 consecutive failures, last: "
            "connection refused; ejected for 30s; backend http://127.0.0.1:9000)",
        ),
        (
            logging.INFO,
            "backend b0: ejected -> healthy (ejection of 30s over; backend http://127.0.0.1:9000)",
        ),
    ]


def test_monitor_timeouts_and_5xx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    a, b = make_backends(1, 1)
    off = HealthMonitor(health(), [a, b], clock=clock)
    for _ in range(10):
        off.responded(a, 502)  # on_5xx off: a response, not a failure
    assert a.available
    for _ in range(4):
        off.timed_out(a)
    off.responded(a, 503)  # resets the count too
    for _ in range(4):
        off.timed_out(a)
    assert a.available
    off.timed_out(a)
    assert not a.available
    assert records(caplog)[-1][1].endswith(
        "5 consecutive failures, last: timeout; ejected for 30s; backend http://127.0.0.1:9000)"
    )

    c, d = make_backends(1, 1)
    on = HealthMonitor(health(passive=PassiveHealthConfig(on_5xx=True)), [c, d], clock=clock)
    for _ in range(4):
        on.responded(c, 502)
    on.responded(c, 404)  # any non-5xx resets
    for _ in range(4):
        on.responded(c, 500)
    assert c.available
    on.timed_out(c)  # mixed kinds count together
    assert not c.available
    assert records(caplog)[-1] == (
        logging.WARNING,
        "backend b0: healthy -> ejected (passive: 5 consecutive failures, last: timeout; "
        "ejected for 30s; backend http://127.0.0.1:9000)",
    )


def test_monitor_passive_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    a, b = make_backends(1, 1)
    monitor = HealthMonitor(
        health(passive=PassiveHealthConfig(enabled=False)), [a, b], clock=FakeClock()
    )
    for _ in range(20):
        monitor.connect_failed(a, "refused")
        monitor.timed_out(a)
        monitor.responded(a, 500)
    assert a.available
    assert records(caplog) == []


def test_monitor_active_results(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    a, b = make_backends(1, 1)
    cfg = health(initial="unhealthy", active=active(rise=2, fall=2))
    monitor = HealthMonitor(cfg, [a, b], clock=clock)
    assert not a.available and not b.available  # unknown counts as unhealthy
    assert monitor.down(a)
    monitor.record_probe(a, True, "HTTP 200")
    assert not a.available
    monitor.record_probe(a, True, "HTTP 200")
    assert a.available and not monitor.down(a)
    monitor.record_probe(a, False, "connect refused")
    assert a.available
    monitor.record_probe(a, False, "connect refused")
    assert not a.available and monitor.down(a)
    assert records(caplog) == [
        (
            logging.INFO,
            "backend b0: unknown -> healthy (active http check: 2 consecutive successes, "
            "last: HTTP 200; probed http://127.0.0.1:9000/)",
        ),
        (
            logging.WARNING,
            "backend b0: healthy -> unhealthy (active http check: 2 consecutive failures, "
            "last: connect refused; probed http://127.0.0.1:9000/)",
        ),
    ]
    status = monitor.status()
    assert status["b0"] == {
        "state": "unhealthy",
        "available": False,
        "ejected": False,
        "ejected_for": None,
        "consecutive_failures": 0,
        "probe_successes": 0,
        "probe_failures": 0,
        "last_probe_ok": False,
        "last_probe": "connect refused",
        "last_probe_age": 0.0,
        "weight": WEIGHT_SCALE,
        "slow_start_factor": 1.0,
    }
    assert status["b1"]["state"] == "unknown"
    assert status["b1"]["last_probe"] is None


def test_monitor_initial_healthy_with_active_checks() -> None:
    a, b = make_backends(1, 1)
    monitor = HealthMonitor(health(active=active()), [a, b], clock=FakeClock())
    assert a.available and b.available
    assert monitor.status()["b0"]["state"] == "unknown"
    inactive = HealthMonitor(health(initial="unhealthy"), make_backends(1), clock=FakeClock())
    assert inactive.backends[0].available  # no active checks: "initial" does not apply
    assert inactive.status()["b0"]["state"] == "unchecked"


def test_monitor_slow_start_ramps_weight(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    a, b, zero = make_backends(10, 10, 0)
    cfg = health(slow_start=10.0, active=active(rise=1, fall=1))
    monitor = HealthMonitor(cfg, [a, b, zero], clock=clock)
    monitor.record_probe(a, True, "ok")  # unknown -> healthy: not a comeback, no ramp
    assert a.weight == 10 * WEIGHT_SCALE
    monitor.record_probe(a, False, "down")
    monitor.record_probe(zero, False, "down")
    clock.advance(5)
    monitor.record_probe(a, True, "ok")
    monitor.record_probe(zero, True, "ok")
    assert a.available and a.weight == 10  # 1% of 10 x WEIGHT_SCALE
    assert zero.weight == 0  # weight 0 stays 0
    weights = []
    for _ in range(12):
        clock.advance(1)
        monitor.tick()
        weights.append(a.weight)
    assert weights == [w * WEIGHT_SCALE for w in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10)]
    assert b.weight == 10 * WEIGHT_SCALE and zero.weight == 0
    assert monitor.status()["b0"]["slow_start_factor"] == 1.0


def test_monitor_slow_start_after_ejection_and_stop_when_down_again() -> None:
    clock = FakeClock()
    a, b = make_backends(4, 4)
    monitor = HealthMonitor(health(slow_start=8.0), [a, b], clock=clock)
    for _ in range(5):
        monitor.connect_failed(a, "refused")
    clock.advance(30)
    monitor.tick()  # readmitted: ramp starts
    assert a.available and a.weight == 4  # 1% of 4 x WEIGHT_SCALE
    clock.advance(4)
    monitor.tick()
    assert a.weight == 2 * WEIGHT_SCALE
    for _ in range(5):
        monitor.connect_failed(a, "refused")  # ejected again (60s this time)
    assert not a.available
    assert a.weight == 4 * WEIGHT_SCALE  # no ramp while out of service
    clock.advance(60)
    monitor.tick()
    assert a.available and a.weight == 4  # a fresh ramp


def test_monitor_reports_changes_of_availability_and_weight() -> None:
    # The owner of the backend set derives its routing list from these two fields.
    clock = FakeClock()
    a, b = make_backends(4, 4)
    changes = []
    cfg = health(slow_start=8.0, active=active(rise=1, fall=1))
    monitor = HealthMonitor(cfg, [a, b], clock=clock, on_change=lambda: changes.append(a.weight))
    monitor.record_probe(a, True, "ok")  # unknown -> healthy: already available, full weight
    monitor.tick()
    assert changes == []
    monitor.record_probe(a, False, "down")
    assert changes == [4 * WEIGHT_SCALE] and not a.available
    monitor.record_probe(a, True, "ok")  # back: available, and its ramp starts at 1%
    assert changes[1:] == [4] and a.available
    for _ in range(9):
        clock.advance(1)
        monitor.tick()
    assert changes[2:] == [w * WEIGHT_SCALE // 2 for w in (1, 2, 3, 4, 5, 6, 7, 8)]
    monitor.refresh(b)  # nothing changed: not reported
    assert len(changes) == 10


def test_monitor_keeps_draining() -> None:
    clock = FakeClock()
    a = Backend(backend_config("a", 9001))
    b = Backend(backend_config("b", 9002))
    monitor = HealthMonitor(health(), [a, b], clock=clock)
    a.draining = True
    monitor.refresh(a)
    assert not a.available
    for _ in range(5):
        monitor.connect_failed(a, "refused")
    clock.advance(30)
    monitor.tick()  # readmitted by the passive path, but still draining
    assert not a.available
    a.draining = False
    monitor.refresh(a)
    assert a.available


@pytest.mark.parametrize("panic", ["fail_open", "fail_closed"])
def test_monitor_panic(panic: str) -> None:
    a, b = make_backends(1, 1)
    cfg = health(panic=panic, active=active(rise=1, fall=1))
    monitor = HealthMonitor(cfg, [a, b], clock=FakeClock())
    assert not monitor.panic_open()
    monitor.record_probe(a, False, "x")
    assert not monitor.panic_open()
    assert monitor.down(a)
    monitor.record_probe(b, False, "x")
    assert not a.available and not b.available
    assert monitor.panic_open() is (panic == "fail_open")
    # Failing open, sessions on a down backend keep being served too.
    assert monitor.down(a) is (panic == "fail_closed")
    monitor.record_probe(b, True, "ok")
    assert not monitor.panic_open()
    assert monitor.down(a)


def test_every_transition_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    backends = make_backends(1, 1, 1, 1)
    monitor = HealthMonitor(health(active=active(rise=2, fall=2)), backends, clock=clock)
    rng = random.Random(7)
    expected = 0
    for _ in range(300):
        backend = rng.choice(backends)
        clock.advance(rng.uniform(0, 3))
        before = len(records(caplog))
        kind = rng.randrange(4)
        if kind == 0:
            monitor.record_probe(backend, rng.random() < 0.5, "x")
        elif kind == 1:
            monitor.connect_failed(backend, "refused")
        elif kind == 2:
            monitor.responded(backend, 200)
        else:
            monitor.tick()
        expected += len(records(caplog)) - before
        for b in backends:
            assert b.available is not monitor.down(b)
    messages = [message for _, message in records(caplog)]
    assert len(messages) == expected
    # Consecutive log lines of one backend and one kind alternate between down and up.
    for name in ("b0", "b1", "b2", "b3"):
        passive = [m for m in messages if m.startswith(f"backend {name}:") and "ject" in m]
        assert all("-> ejected" in m for m in passive[0::2])
        # Readmitted, unless active checks hold it out meanwhile.
        assert all("ejected -> healthy" in m or "ejected -> unhealthy" in m for m in passive[1::2])


def test_ejection_ending_while_active_checks_fail_is_logged_as_unhealthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = FakeClock()
    (backend,) = make_backends(1)
    monitor = HealthMonitor(
        health(
            active=active(rise=2, fall=2),
            passive=PassiveHealthConfig(consecutive_failures=1, max_ejection_percent=100),
        ),
        [backend],
        clock=clock,
    )
    monitor.connect_failed(backend, "refused")
    monitor.record_probe(backend, False, "refused")
    monitor.record_probe(backend, False, "refused")
    clock.advance(3600)
    monitor.tick()
    assert backend.available is False
    assert records(caplog)[-1][1].startswith("backend b0: ejected -> unhealthy")


def test_passing_active_check_ends_a_passive_ejection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = FakeClock()
    backend, _ = make_backends(1, 1)
    monitor = HealthMonitor(
        health(active=active(rise=2, fall=2), passive=PassiveHealthConfig(consecutive_failures=2)),
        [backend, _],
        clock=clock,
    )
    monitor.connect_failed(backend, "refused")
    monitor.connect_failed(backend, "refused")
    assert not backend.available
    monitor.record_probe(backend, True, "HTTP 200")
    assert backend.available  # long before the 30 s ejection would have ended
    assert records(caplog)[-1][1] == (
        "backend b0: ejected -> healthy "
        "(active http check passed: HTTP 200; probed http://127.0.0.1:9000/)"
    )


def test_sessions_of_a_recovering_backend_are_tried() -> None:
    """Workers judge health apart: one may readmit a backend a probe earlier than another.
    Sessions get 404 while their backend is down, but not once a probe passed toward rise."""
    a, b = make_backends(1, 1)
    clock = FakeClock()
    monitor = HealthMonitor(health(active=active(rise=2, fall=1)), [a, b], clock=clock)
    assert not monitor.refuses_sessions(a)
    monitor.record_probe(a, False, "refused")
    assert monitor.down(a) and monitor.refuses_sessions(a)
    monitor.record_probe(a, True, "200")  # 1 of rise 2: still down, but recovering
    assert monitor.down(a) and not a.available
    assert not monitor.refuses_sessions(a)
    monitor.record_probe(a, False, "refused")  # the streak broke: down for good again
    assert monitor.refuses_sessions(a)


def test_sessions_of_an_ejected_backend_are_refused_even_while_recovering() -> None:
    a, b, c = make_backends(1, 1, 1)
    clock = FakeClock()
    cfg = health(
        active=active(rise=2, fall=1),
        passive=PassiveHealthConfig(consecutive_failures=1, max_ejection_percent=100),
    )
    monitor = HealthMonitor(cfg, [a, b, c], clock=clock)
    monitor.record_probe(a, False, "refused")
    monitor.record_probe(a, True, "200")
    monitor.connect_failed(a, "refused")
    assert monitor.ejected(a) and monitor.refuses_sessions(a)


def test_a_worker_that_does_not_probe_adopts_the_probing_workers_verdicts() -> None:
    clock = FakeClock()
    cfg = health(active=active(rise=2, fall=1))
    prober_backends, follower_backends = make_backends(1, 1), make_backends(1, 1)
    prober = HealthMonitor(cfg, prober_backends, clock=clock)
    follower = HealthMonitor(cfg, follower_backends, clock=clock, probing=False)
    a, b = follower_backends
    prober.record_probe(prober_backends[0], False, "connect refused")
    follower.adopt(prober.verdicts())
    assert follower.unhealthy(a) and not a.available and not follower.unhealthy(b)
    assert follower.refuses_sessions(a)
    prober.record_probe(prober_backends[0], True, "HTTP 200")  # 1 of rise 2: recovering
    follower.adopt(prober.verdicts())
    assert follower.unhealthy(a) and not follower.refuses_sessions(a)
    prober.record_probe(prober_backends[0], True, "HTTP 200")
    follower.adopt(prober.verdicts())
    assert not follower.unhealthy(a) and a.available
    assert follower.status()["b0"]["state"] == "healthy"
    counts = follower.counters()["counts"]
    assert ["transition", "b0", "unhealthy", 1] in counts
    assert ["transition", "b0", "healthy", 1] in counts


async def test_a_worker_that_does_not_probe_starts_no_probes() -> None:
    monitor = HealthMonitor(health(active=active()), make_backends(1), probing=False)
    await monitor.start()
    try:
        assert [t.get_name() for t in monitor._tasks] == ["health-ticker"]
    finally:
        await monitor.stop()


def test_one_log_line_per_change_of_routing_state(caplog: pytest.LogCaptureFixture) -> None:
    """Ejected, then failing probes too, then recovering: the log follows what routing sees,
    each line starting where the one before ended, with the URL probed or used."""
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    backend, other = make_backends(1, 1)
    cfg = health(
        active=ActiveHealthConfig(enabled=True, type="mcp", rise=2, fall=2),
        passive=PassiveHealthConfig(consecutive_failures=2),
    )
    monitor = HealthMonitor(cfg, [backend, other], clock=clock)
    monitor.record_probe(backend, True, "MCP ping ok")  # first verdict
    monitor.connect_failed(backend, "connect refused")
    monitor.connect_failed(backend, "connect refused")  # ejected
    monitor.record_probe(backend, False, "connect refused")
    monitor.record_probe(backend, False, "connect refused")  # unhealthy, but still ejected
    monitor.record_probe(backend, True, "MCP ping ok")
    monitor.record_probe(backend, True, "MCP ping ok")  # healthy again: ejection ends too
    assert backend.available
    probed = "probed http://127.0.0.1:9000/mcp"
    assert records(caplog) == [
        (
            logging.INFO,
            "backend b0: unknown -> healthy "
            f"(active mcp check: passed, last: MCP ping ok; {probed})",
        ),
        (
            logging.WARNING,
            "backend b0: healthy -> ejected (passive: 2 consecutive failures, last: connect "
            "refused; ejected for 30s; backend http://127.0.0.1:9000)",
        ),
        (
            logging.INFO,
            f"backend b0: ejected -> healthy (active mcp check passed: MCP ping ok; {probed})",
        ),
    ]


def test_ejection_over_while_probes_fail_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    clock = FakeClock()
    backend, other = make_backends(1, 1)
    cfg = health(active=active(rise=1, fall=1), passive=PassiveHealthConfig(consecutive_failures=1))
    monitor = HealthMonitor(cfg, [backend, other], clock=clock)
    monitor.connect_failed(backend, "connect refused")
    monitor.record_probe(backend, False, "connect refused")
    clock.advance(30)
    monitor.tick()  # the ejection is over; the probes still fail
    assert not backend.available
    lines = [message for _, message in records(caplog)]
    assert [line.split(" (")[0] for line in lines] == [
        "backend b0: unknown -> ejected",
        "backend b0: ejected -> unhealthy",
    ]
    assert lines[1].endswith("(ejection of 30s over; backend http://127.0.0.1:9000)")


def test_adopted_verdicts_are_debug_lines(caplog: pytest.LogCaptureFixture) -> None:
    """With several workers the probing one logs a change; the others only echo it."""
    caplog.set_level(logging.DEBUG, LOGGER)
    backend, other = make_backends(1, 1)
    monitor = HealthMonitor(
        health(active=active()), [backend, other], clock=FakeClock(), probing=False
    )
    monitor.adopt({"b0": [False, 0, "connect refused"]})
    assert not backend.available
    assert records(caplog) == [
        (
            logging.DEBUG,
            "backend b0: unknown -> unhealthy (active http check (probing worker): connect "
            "refused; probed http://127.0.0.1:9000/)",
        )
    ]
