"""W3C trace context as the tracer reads it from clients (untrusted) and hands it to
backends, and the sampling decision: pure functions and ``Tracer.begin`` fed header lists.

The malformed and valid cases are those of the W3C's own test suite
(github.com/w3c/trace-context, test/test.py: every traceparent and tracestate the harness
sends, with the outcome it expects), and ours (uppercase hex, duplicates, overlong, binary).
"""

from __future__ import annotations

import pytest

from mcplb.proxy.observability import tracing
from mcplb.proxy.observability.tracing import (
    MAX_STATE_LENGTH,
    Tracer,
    parse_traceparent,
    parse_tracestate,
)
from tests.support.trace_context import (
    OURS_INVALID,
    PARENT,
    TRACE,
    VALID,
    W3C_INVALID,
    W3C_VALID,
)


@pytest.mark.parametrize("value", W3C_INVALID + OURS_INVALID)
def test_malformed_traceparent_is_refused(value: str) -> None:
    assert parse_traceparent(value.encode("latin-1")) is None


@pytest.mark.parametrize("value", W3C_VALID)
def test_valid_traceparent(value: str) -> None:
    assert parse_traceparent(value.encode()) == (int(TRACE, 16), int(PARENT, 16), 1)


def test_not_sampled_flag_is_read() -> None:
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00".encode()) == (
        int(TRACE, 16),
        int(PARENT, 16),
        0,
    )


# --- tracestate (W3C test suite cases) ---------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ""),
        ([""], ""),
        (["foo=1", ""], "foo=1"),
        (["", "foo=1"], "foo=1"),
        (["foo=1,bar=2", "rojo=1,congo=2", "baz=3"], "foo=1,bar=2,rojo=1,congo=2,baz=3"),
        (["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
        (["\t foo=1 \t"], "foo=1"),
        (["foo=1,foo=2"], "foo=1"),  # a duplicate key: the first kept
        (["foo=1", "foo=2"], "foo=1"),
        (["foo@=1,bar=2"], "foo@=1,bar=2"),
        (["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2"),
        (["foo=1", "z" * 256 + "=1"], "foo=1," + "z" * 256 + "=1"),
        (["t@" + "v" * 15 + "=1"], "t@" + "v" * 15 + "=1"),
        (["a=" + "".join(map(chr, range(0x20, 0x7F))).replace(",", "").replace("=", "")],
         "a=" + "".join(map(chr, range(0x20, 0x7F))).replace(",", "").replace("=", "")),
    ],
)  # fmt: skip
def test_tracestate_kept(values: list[str], expected: str) -> None:
    assert parse_tracestate([v.encode() for v in values]) == expected


@pytest.mark.parametrize(
    "values",
    [
        ["foo =1"],
        ["FOO=1"],
        ["foo.bar=1"],
        ["@foo=1,bar=2"],
        ["foo=bar=baz"],
        ["foo=,bar=3"],
        ["foo=1", "z" * 257 + "=1"],
        [",".join(f"bar{i:02}={i:02}" for i in range(1, 34))],  # 33 members
        ["foo=1\r\nx-injected: 1"],
        ["foo=\xe9"],
    ],
)
def test_tracestate_dropped(values: list[str]) -> None:
    assert parse_tracestate([v.encode("latin-1") for v in values]) is None


def test_32_members_are_kept() -> None:
    members = [f"bar{i:02}={i:02}" for i in range(1, 33)]
    assert parse_tracestate([",".join(members).encode()]) == ",".join(members)


def test_long_tracestate_is_cut_by_whole_members() -> None:
    """Past 512 characters: members of 128 or more go first, then members from the end."""
    long = "big=" + "x" * 200
    members = [f"k{i:02}=" + "v" * 40 for i in range(12)]  # 12 x 44 + 11 commas = 539
    kept = parse_tracestate([",".join([members[0], long, *members[1:]]).encode()])
    assert kept is not None and len(kept) <= MAX_STATE_LENGTH
    assert long not in kept
    assert kept == ",".join(members[:11])


# --- Tracer.begin: the decision and the headers the backend gets ---------------------------


class Exchange:
    """What a span reads of its exchange."""

    retry = None
    bound_backend = None


def tracer(ratio: float = 1.0) -> Tracer:
    return Tracer(ratio, max_queue=8, batch_size=4, counts={})


def begin(headers: list[tuple[bytes, bytes]], ratio: float = 1.0) -> tuple[object, Tracer]:
    t = tracer(ratio)
    return t.begin(headers, Exchange()), t


def context(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n in (b"traceparent", b"tracestate")]


def test_a_client_context_is_continued_and_replaced() -> None:
    headers = [
        (b"host", b"x"),
        (b"traceparent", VALID.encode()),
        (b"tracestate", b"rojo=00f067aa0ba902b7"),
        (b"tracestate", b"congo=t61rcWkgMzE"),
    ]
    trace, _ = begin(headers)
    assert isinstance(trace, tracing.Trace)
    assert trace.trace_id == int(TRACE, 16) and trace.parent_id == int(PARENT, 16)
    assert trace.state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert context(headers) == [
        (b"traceparent", f"00-{TRACE}-{trace.span_id:016x}-01".encode()),
        (b"tracestate", b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ]
    assert headers[0] == (b"host", b"x")


def test_a_not_sampled_client_context_passes_untouched() -> None:
    sent = [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode()), (b"tracestate", b"a=1")]
    headers = list(sent)
    trace, _ = begin(headers)
    assert trace is None
    assert headers == sent


@pytest.mark.parametrize("value", W3C_INVALID + OURS_INVALID)
def test_a_malformed_context_starts_a_new_trace(value: str) -> None:
    headers = [(b"traceparent", value.encode("latin-1")), (b"tracestate", b"foo=1")]
    trace, t = begin(headers)
    assert isinstance(trace, tracing.Trace)
    assert trace.parent_id == 0 and trace.trace_id != int(TRACE, 16)
    assert trace.state == ""  # the state of a context we did not take is not ours to send
    assert context(headers) == [
        (b"traceparent", f"00-{trace.trace_id:032x}-{trace.span_id:016x}-01".encode())
    ]
    assert t.counts["context_refused"] == 1


def test_a_malformed_context_not_recorded_is_not_forwarded() -> None:
    headers = [(b"traceparent", b"00-garbage"), (b"tracestate", b"foo=1"), (b"a", b"b")]
    trace, t = begin(headers, ratio=0.0)
    assert trace is None
    assert headers == [(b"a", b"b")]
    assert t.counts["context_refused"] == 1


def test_duplicate_traceparents_are_refused() -> None:
    other = f"00-{TRACE[:-1]}1-{PARENT}-01"
    headers = [(b"traceparent", other.encode()), (b"traceparent", VALID.encode())]
    trace, _ = begin(headers)
    assert isinstance(trace, tracing.Trace)
    assert trace.parent_id == 0 and trace.trace_id not in (int(TRACE, 16), int(other[3:35], 16))
    assert len(context(headers)) == 1


def test_without_a_context_the_ratio_decides() -> None:
    headers: list[tuple[bytes, bytes]] = [(b"host", b"x")]
    trace, _ = begin(headers, ratio=0.0)
    assert trace is None and headers == [(b"host", b"x")]
    recorded = [begin([], ratio=0.25)[0] is not None for _ in range(4000)]
    assert 800 < sum(recorded) < 1200  # 1000 expected; 6 standard deviations either way
    trace, _ = begin(headers, ratio=1.0)
    assert isinstance(trace, tracing.Trace) and trace.parent_id == 0
    assert context(headers) == [
        (b"traceparent", f"00-{trace.trace_id:032x}-{trace.span_id:016x}-01".encode())
    ]


def test_a_sampled_client_context_is_followed_whatever_the_ratio() -> None:
    headers = [(b"traceparent", VALID.encode())]
    trace, _ = begin(headers, ratio=0.0)
    assert isinstance(trace, tracing.Trace) and trace.parent_id == int(PARENT, 16)


def test_ids_differ_per_request() -> None:
    spans = [begin([(b"traceparent", VALID.encode())])[0] for _ in range(50)]
    assert len({s.span_id for s in spans if isinstance(s, tracing.Trace)}) == 50


def test_a_full_queue_drops_and_counts() -> None:
    t = tracer()
    woken: list[int] = []
    t.wake = lambda: woken.append(len(t.queue))
    for _ in range(10):
        trace = t.begin([], Exchange())
        assert trace is not None
        t.submit(trace)
    assert len(t.queue) == 8 and t.counts["dropped"] == 2
    assert woken and woken[0] == 4  # the exporter is woken once a batch is waiting
