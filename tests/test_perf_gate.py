"""The performance regression gate: mcplb's CPU time per request relative to the reference
relay of bench/minimal.py, measured in the same run under the same load
(bench/cpu_gate.py; about 5-15 s)."""

from __future__ import annotations

import pytest

from bench.cpu_gate import measure


async def test_cpu_per_request_within_the_gate(capsys: pytest.CaptureFixture[str]) -> None:
    result = await measure()
    with capsys.disabled():  # the figure shows in every run, not only when it fails
        print(f"\nperf gate: {result.summary()}")
    assert result.ratio <= result.limit, f"CPU per request regressed: {result.summary()}"
