"""Trace context corpora for the tracing tests: the traceparent values of the W3C's own test
suite (github.com/w3c/trace-context, test/test.py), the outcome it expects for each, and
ours."""

from __future__ import annotations

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
VALID = f"00-{TRACE}-{PARENT}-01"

# W3C test suite: traceparents a participant must ignore (and restart the trace).
W3C_INVALID = [
    f"00-{TRACE}-{PARENT}-01.",  # version 00 is exactly 55 characters
    f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
    f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like",  # a later version: "-" after 55
    f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
    f".0-{TRACE}-{PARENT}-01",
    f"0.-{TRACE}-{PARENT}-01",
    f"000-{TRACE}-{PARENT}-01",
    f"0000-{TRACE}-{PARENT}-01",
    f"0-{TRACE}-{PARENT}-01",
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-.{TRACE[1:]}-{PARENT}-01",
    f"00-{TRACE[:-1]}.-{PARENT}-01",
    f"00-{TRACE}3-{PARENT}-01",
    f"00-{TRACE[:-1]}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE}-.{PARENT[1:]}-01",
    f"00-{TRACE}-{PARENT[:-1]}.-01",
    f"00-{TRACE}-{PARENT}7-01",
    f"00-{TRACE}-{PARENT[:-1]}-01",
    f"00-{TRACE}-{PARENT}-.0",
    f"00-{TRACE}-{PARENT}-0.",
    f"00-{TRACE}-{PARENT}-001",
    f"00-{TRACE}-{PARENT}-1",
]
# Ours: uppercase hex (the grammar is HEXDIGLC), empty, overlong, separators, binary.
OURS_INVALID = [
    f"00-{'ABCDEF' + TRACE[6:]}-{PARENT}-01",
    f"00-{TRACE}-{'ABCDEF' + PARENT[6:]}-01",
    f"00-{TRACE}-{PARENT}-0A",
    "",
    "00",
    f"00-{TRACE}-{PARENT}-01" + "0" * 8000,
    f"00_{TRACE}_{PARENT}_01",
    f"00-{TRACE}-{PARENT}-01\x00",
    f"00-{TRACE}-{PARENT}-\xff1",
]
# W3C test suite: accepted (a later version read by its first 55 characters; OWS trimmed).
W3C_VALID = [
    VALID,
    f"cc-{TRACE}-{PARENT}-01",
    f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
    f" {VALID}",
    f"\t{VALID}",
    f"{VALID} ",
    f"{VALID}\t",
    f"\t {VALID} \t",
]
