"""Admission control without sockets: slot accounting, caps and the queue of waiters.

The backends are real ``proxy.cluster.backends.Backend`` objects (their counters are what the
strategies read); the waiters follow the relay's ``retry_admission`` contract.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mcplb.proxy.cluster.admission import Admission
from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.config.schema import BackendConfig, LimitsConfig


def backend(
    name: str, max_connections: int | None = None, max_streams: int | None = None
) -> Backend:
    port = 9000 + ord(name[0])
    return Backend(
        BackendConfig(
            name,
            f"http://127.0.0.1:{port}",
            "http",
            "127.0.0.1",
            port,
            max_connections=max_connections,
            max_streams=max_streams,
        )
    )


def set_limit(b: Backend, max_connections: int | None) -> None:
    b.reconfigure(dataclasses.replace(b.config, max_connections=max_connections))


class Waiter:
    """A queued request as the relay's exchange is one: bound to a backend (a session's)
    or not; on retry it asks ``Admission.admissible`` where it may go, as the exchange
    does, with the first backend that has room as its pick."""

    def __init__(
        self,
        admission: Admission,
        backends: list[Backend],
        label: str,
        waiting_for: Backend | None = None,
        admitted: list[Waiter] | None = None,
    ) -> None:
        self.admission = admission
        self.backends = backends
        self.label = label
        self.waiting_for = waiting_for
        self.admitted = admitted if admitted is not None else []
        self.slot: Backend | None = None
        self.retries = 0

    def retry_admission(self) -> bool:
        assert self in self.admission.queue, f"{self.label} retried while not queued"
        self.retries += 1
        admission = self.admission
        target = admission.admissible(
            self.waiting_for,
            lambda: next(
                (b for b in self.backends if b.available and not admission.backend_full(b)),
                None,
            ),
        )
        if target is None:
            return False
        admission.leave(self)
        admission.hold(target, False)
        self.slot = target
        self.admitted.append(self)
        return True

    def __repr__(self) -> str:
        return f"Waiter({self.label})"


def counts(b: Backend) -> tuple[int, int]:
    return b.in_flight, b.streams


# -- holding and releasing --------------------------------------------------------------


def test_hold_and_release_keep_backend_and_worker_counts() -> None:
    a, b = backend("a"), backend("b")
    adm = Admission(LimitsConfig(), [a, b])
    adm.hold(a, False)
    adm.hold(a, True)
    adm.hold(b, False)
    assert counts(a) == (2, 1) and counts(b) == (1, 0)
    assert (adm.requests, adm.streams) == (2, 1)
    adm.release(a, True)
    assert counts(a) == (1, 0) and (adm.requests, adm.streams) == (2, 0)
    adm.release(a, False)
    adm.release(b, False)
    assert counts(a) == counts(b) == (0, 0)
    assert (adm.requests, adm.streams) == (0, 0)


def test_unlimited_by_default() -> None:
    a = backend("a")
    adm = Admission(LimitsConfig(), [a])
    assert not adm.limited and not adm.per_backend
    for _ in range(500):
        adm.hold(a, False)
        adm.hold(a, True)
    assert adm.can_hold(a) and not adm.streams_full(a) and not adm.any_full([a])
    assert (adm.max_queue, adm.queue_timeout) == (1000, 5.0)


def test_backend_full_counts_requests_not_streams() -> None:
    a, b = backend("a", max_connections=2), backend("b")
    adm = Admission(LimitsConfig(), [a, b])
    assert adm.limited and adm.per_backend
    for _ in range(3):
        adm.hold(a, True)  # streams never fill request slots
    assert not adm.backend_full(a)
    adm.hold(a, False)
    assert not adm.backend_full(a)
    adm.hold(a, False)
    assert adm.backend_full(a) and not adm.can_hold(a)
    assert adm.can_hold(b) and not adm.worker_full()
    adm.release(a, False)
    assert adm.can_hold(a)


def test_worker_full_spans_backends() -> None:
    a, b = backend("a"), backend("b")
    adm = Admission(LimitsConfig(max_in_flight=2), [a, b])
    assert adm.limited and not adm.per_backend
    adm.hold(a, False)
    adm.hold(a, True)  # a stream is not an in-flight request
    assert not adm.worker_full()
    adm.hold(b, False)
    assert adm.worker_full()
    assert not adm.can_hold(a) and not adm.can_hold(b)
    assert not adm.backend_full(a) and not adm.backend_full(b)
    adm.release(b, False)
    assert adm.can_hold(b)


def test_streams_full_per_backend_and_per_worker() -> None:
    a, b, c = backend("a", max_streams=1), backend("b"), backend("c")
    adm = Admission(LimitsConfig(max_streams=3), [a, b, c])
    adm.hold(a, True)
    assert adm.streams_full(a) and not adm.streams_full(b)
    adm.hold(b, True)
    adm.hold(b, True)
    assert adm.streams_full(b) and adm.streams_full(c)  # the worker's cap
    for _ in range(5):
        adm.hold(c, False)  # requests are not streams
    adm.release(b, True)
    assert not adm.streams_full(c) and adm.streams_full(a)


def test_any_full_only_counts_available_backends() -> None:
    a, b = backend("a", max_connections=1), backend("b", max_connections=1)
    adm = Admission(LimitsConfig(), [a, b])
    assert not adm.any_full([a, b])
    adm.hold(a, False)
    assert adm.any_full([a, b])
    a.available = False
    assert not adm.any_full([a, b])
    # Without any per-backend limit a backend is never full for this purpose.
    c = backend("c")
    plain = Admission(LimitsConfig(max_in_flight=1), [c])
    plain.hold(c, False)
    assert not plain.any_full([c])


# -- the queue ---------------------------------------------------------------------------


def test_enqueue_is_bounded_by_max_queue() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(max_queue=2), [a])
    w1, w2, w3 = (Waiter(adm, [a], f"w{i}") for i in (1, 2, 3))
    assert adm.enqueue(w1) and adm.enqueue(w2)
    assert not adm.enqueue(w3)
    assert list(adm.queue) == [w1, w2]
    adm.leave(w1)
    adm.leave(w1)  # leaving twice (timer and disconnect both fire) is harmless
    adm.leave(w3)  # never queued
    assert list(adm.queue) == [w2]
    assert adm.enqueue(w3)
    assert list(adm.queue) == [w2, w3]


def test_max_queue_zero_never_queues() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(max_queue=0), [a])
    assert not adm.enqueue(Waiter(adm, [a], "w"))
    assert not adm.queue


def test_waiters_are_admitted_in_arrival_order_one_per_freed_slot() -> None:
    a = backend("a", max_connections=2)
    adm = Admission(LimitsConfig(), [a])
    admitted: list[Waiter] = []
    adm.hold(a, False)
    adm.hold(a, False)
    waiters = [Waiter(adm, [a], f"w{i}", admitted=admitted) for i in range(5)]
    for w in waiters:
        assert adm.enqueue(w)
    adm.release(a, False)
    assert admitted == waiters[:1]  # one freed slot admits exactly one waiter
    assert len(adm.queue) == 4 and counts(a) == (2, 0)
    adm.release(a, False)
    adm.release(a, False)
    assert admitted == waiters[:3]
    assert list(adm.queue) == waiters[3:]
    # Nobody behind the head was even asked while the head could take the slot.
    assert [w.retries for w in waiters] == [1, 1, 1, 0, 0]
    for _ in range(4):  # 2 held at first + 5 admitted - 3 released
        adm.release(a, False)
    assert admitted == waiters and not adm.queue
    assert counts(a) == (0, 0) and adm.requests == 0


def test_release_with_empty_queue_asks_nobody() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(), [a])
    adm.hold(a, False)
    adm.release(a, False)
    assert counts(a) == (0, 0) and adm.requests == 0


def test_stream_release_admits_nobody() -> None:
    """A stream never held a request slot, so its end frees none."""
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(), [a])
    adm.hold(a, False)
    adm.hold(a, True)
    w = Waiter(adm, [a], "w")
    adm.enqueue(w)
    adm.release(a, True)
    assert w.slot is None and list(adm.queue) == [w]
    adm.release(a, False)
    assert w.slot is a and not adm.queue


def test_waiter_bound_to_another_backend_is_skipped_not_blocking() -> None:
    a, b = backend("a", max_connections=1), backend("b", max_connections=1)
    adm = Admission(LimitsConfig(), [a, b])
    admitted: list[Waiter] = []
    adm.hold(a, False)
    adm.hold(b, False)
    on_b = Waiter(adm, [a, b], "on_b", waiting_for=b, admitted=admitted)
    anywhere = Waiter(adm, [a, b], "anywhere", admitted=admitted)
    on_a = Waiter(adm, [a, b], "on_a", waiting_for=a, admitted=admitted)
    for w in (on_b, anywhere, on_a):
        assert adm.enqueue(w)
    adm.release(a, False)
    assert admitted == [anywhere] and anywhere.slot is a
    assert on_b.retries == 0  # skipped: its backend is still full
    adm.release(a, False)  # anywhere's exchange ends
    assert admitted == [anywhere, on_a] and on_a.slot is a
    assert list(adm.queue) == [on_b]
    adm.release(b, False)
    assert admitted == [anywhere, on_a, on_b] and on_b.slot is b
    for w in (on_a, on_b):
        assert w.slot is not None
        adm.release(w.slot, False)
    assert counts(a) == counts(b) == (0, 0) and adm.requests == 0


def test_worker_slot_freed_on_one_backend_admits_a_waiter_bound_to_another() -> None:
    """With only ``max_in_flight`` the slot that frees is the worker's, whichever backend
    it was on: a session-bound waiter for a backend with room must take it."""
    a, b = backend("a"), backend("b")
    adm = Admission(LimitsConfig(max_in_flight=1), [a, b])
    adm.hold(a, False)
    on_b = Waiter(adm, [a, b], "on_b", waiting_for=b)
    assert adm.enqueue(on_b)
    adm.release(a, False)
    assert on_b.slot is b, "the waiter stayed queued although the worker had a free slot"
    assert not adm.queue
    adm.release(b, False)
    assert counts(a) == counts(b) == (0, 0) and adm.requests == 0


def test_worker_limit_stops_the_wake_at_the_cap() -> None:
    a, b = backend("a", max_connections=1), backend("b", max_connections=1)
    adm = Admission(LimitsConfig(max_in_flight=1), [a, b])
    adm.hold(a, False)
    waiters = [Waiter(adm, [a, b], f"w{i}") for i in range(3)]
    for w in waiters:
        adm.enqueue(w)
    adm.release(a, False)
    assert [w.slot for w in waiters] == [a, None, None]
    assert adm.requests == 1 and len(adm.queue) == 2


def test_became_stream_frees_the_request_slot_and_admits_a_waiter() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(max_in_flight=1), [a])
    adm.hold(a, False)
    w = Waiter(adm, [a], "w")
    adm.enqueue(w)
    adm.became_stream(a)
    assert w.slot is a and not adm.queue
    assert counts(a) == (2, 1)  # the stream and the admitted request
    assert (adm.requests, adm.streams) == (1, 1)
    assert adm.backend_full(a)
    adm.release(a, True)  # the stream ends
    adm.release(a, False)  # the request ends
    assert counts(a) == (0, 0) and (adm.requests, adm.streams) == (0, 0)


def test_configure_with_a_raised_backend_limit_admits_waiters() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(), [a])
    adm.hold(a, False)
    waiters = [Waiter(adm, [a], f"w{i}") for i in range(4)]
    for w in waiters:
        adm.enqueue(w)
    set_limit(a, 3)
    adm.configure(LimitsConfig(), [a])
    assert [w.slot for w in waiters] == [a, a, None, None]
    assert counts(a) == (3, 0) and len(adm.queue) == 2


def test_configure_with_a_raised_worker_limit_admits_waiters() -> None:
    a, b = backend("a"), backend("b")
    adm = Admission(LimitsConfig(max_in_flight=1), [a, b])
    adm.hold(b, False)
    waiters = [Waiter(adm, [a, b], f"w{i}") for i in range(3)]
    waiters.append(Waiter(adm, [a, b], "bound", waiting_for=b))
    for w in waiters:
        adm.enqueue(w)
    adm.configure(LimitsConfig(max_in_flight=3, max_queue=7, queue_timeout=0.5), [a, b])
    assert (adm.max_queue, adm.queue_timeout) == (7, 0.5)
    assert [w.slot is not None for w in waiters] == [True, True, False, False]
    assert adm.requests == 3 and len(adm.queue) == 2


def test_configure_dropping_every_limit_admits_everyone() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(max_in_flight=1), [a])
    adm.hold(a, False)
    waiters = [Waiter(adm, [a], f"w{i}") for i in range(3)]
    for w in waiters:
        adm.enqueue(w)
    set_limit(a, None)
    adm.configure(LimitsConfig(), [a])
    assert not adm.limited
    assert all(w.slot is a for w in waiters) and not adm.queue
    assert counts(a) == (4, 0)


def test_configure_keeps_counts_and_queue() -> None:
    a = backend("a", max_connections=1)
    adm = Admission(LimitsConfig(), [a])
    adm.hold(a, False)
    adm.hold(a, True)
    w = Waiter(adm, [a], "w")
    adm.enqueue(w)
    adm.configure(LimitsConfig(max_streams=5), [a])
    assert (adm.requests, adm.streams) == (1, 1) and list(adm.queue) == [w]
    assert counts(a) == (2, 1)


# -- random sequences --------------------------------------------------------------------

LIMIT = st.one_of(st.none(), st.integers(1, 3))


class AdmissionMachine(RuleBasedStateMachine):
    """Random arrivals, ends, streams turning up and reloads against a model of what is
    held; after every step the counts match, nothing is negative and no queued waiter
    could have taken a slot (the queue is settled)."""

    def __init__(self) -> None:
        super().__init__()
        self.backends = [backend("a", 2), backend("b", 1), backend("c")]
        self.limits = LimitsConfig(max_in_flight=3, max_streams=2, max_queue=4)
        self.adm = Admission(self.limits, self.backends)
        self.admitted: list[Waiter] = []
        self.held: list[tuple[Backend, bool]] = []  # (backend, is_stream) per exchange
        self.rejected = 0
        self.labels = 0

    def _admissible(self, target: Backend | None) -> bool:
        adm = self.adm
        if target is not None:
            return adm.can_hold(target)
        return not adm.worker_full() and any(
            b.available and not adm.backend_full(b) for b in self.backends
        )

    def _collect(self) -> None:
        for w in self.admitted:
            assert w.slot is not None
            self.held.append((w.slot, False))
        self.admitted.clear()

    @rule(which=st.integers(0, 3))
    def request_arrives(self, which: int) -> None:
        target = self.backends[which] if which < 3 else None  # 3: not bound to a session
        self.labels += 1
        w = Waiter(self.adm, self.backends, f"r{self.labels}", target, self.admitted)
        if self._admissible(target):
            if target is None:
                target = next(b for b in self.backends if not self.adm.backend_full(b))
            self.adm.hold(target, False)
            self.held.append((target, False))
        elif not self.adm.enqueue(w):
            self.rejected += 1

    @rule(which=st.integers(0, 2))
    def stream_arrives(self, which: int) -> None:
        b = self.backends[which]
        if self.adm.streams_full(b):
            self.rejected += 1
            return
        self.adm.hold(b, True)
        self.held.append((b, True))

    @precondition(lambda self: bool(self.held))
    @rule(index=st.integers(0, 1000))
    def exchange_ends(self, index: int) -> None:
        b, stream = self.held.pop(index % len(self.held))
        self.adm.release(b, stream)
        self._collect()

    @precondition(lambda self: any(not s for _, s in self.held))
    @rule(index=st.integers(0, 1000))
    def response_is_a_stream(self, index: int) -> None:
        requests = [i for i, (_, s) in enumerate(self.held) if not s]
        i = requests[index % len(requests)]
        b = self.held[i][0]
        self.held[i] = (b, True)
        self.adm.became_stream(b)
        self._collect()

    @precondition(lambda self: bool(self.adm.queue))
    @rule(index=st.integers(0, 1000))
    def waiter_leaves(self, index: int) -> None:
        """Its client went away or its queue timeout fired."""
        queue = list(self.adm.queue)
        self.adm.leave(queue[index % len(queue)])

    @rule(a=LIMIT, b=LIMIT, worker=LIMIT)
    def reload(self, a: int | None, b: int | None, worker: int | None) -> None:
        set_limit(self.backends[0], a)
        set_limit(self.backends[1], b)
        self.limits = dataclasses.replace(self.limits, max_in_flight=worker)
        self.adm.configure(self.limits, self.backends)
        self._collect()

    @invariant()
    def counts_match_what_is_held(self) -> None:
        adm = self.adm
        for b in self.backends:
            assert b.in_flight == sum(1 for h, _ in self.held if h is b)
            assert b.streams == sum(1 for h, s in self.held if h is b and s)
            assert 0 <= b.streams <= b.in_flight
        assert adm.requests == sum(1 for _, s in self.held if not s) >= 0
        assert adm.streams == sum(1 for _, s in self.held if s) >= 0
        assert len(adm.queue) <= self.limits.max_queue

    @invariant()
    def queue_is_settled(self) -> None:
        for w in self.adm.queue:
            assert not self._admissible(w.waiting_for), f"{w} could have taken a slot"

    def teardown(self) -> None:
        for w in list(self.adm.queue):
            self.adm.leave(w)
        while self.held:
            b, stream = self.held.pop()
            self.adm.release(b, stream)
        for b in self.backends:
            assert counts(b) == (0, 0)
        assert (self.adm.requests, self.adm.streams) == (0, 0)


TestAdmissionMachine = AdmissionMachine.TestCase
TestAdmissionMachine.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_requests_over_the_limit_queue_and_drain_exactly(limit: int) -> None:
    a = backend("a", max_connections=limit)
    adm = Admission(LimitsConfig(), [a])
    admitted: list[Waiter] = []
    for _ in range(limit):
        adm.hold(a, False)
    waiters = [Waiter(adm, [a], f"w{i}", admitted=admitted) for i in range(3 * limit)]
    for w in waiters:
        assert not adm.can_hold(a)
        assert adm.enqueue(w)
    released = 0
    while adm.requests:  # bounded: every release ends one exchange
        adm.release(a, False)
        released += 1
        assert a.in_flight <= limit
    assert admitted == waiters and released == 4 * limit
    assert counts(a) == (0, 0)
