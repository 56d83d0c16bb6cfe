"""bench/http_bench.py end to end, shortened: HAProxy, mcplb and the reference relay in front of
two nginx backends under wrk, so that the throughput table keeps working (about 12 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.http_bench import self_test

REPO = Path(__file__).resolve().parent.parent


def test_wrk_output_parser() -> None:
    assert self_test() == 0


def test_each_proxy_gets_its_cpu_time_per_request(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/http_bench.py",
            "--duration",
            "1",
            "--targets",
            "haproxy,mcplb,reference",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = {r["target"]: r for r in json.loads(out.read_text())["results"]}
    haproxy, mcplb, reference = results["haproxy"], results["mcplb"], results["reference"]
    for r in (haproxy, mcplb, reference):
        assert r["status"] == "ok", r  # "skipped": HAProxy is missing (make bench-tools)
        # A request costs a proxy microseconds of CPU, and a single-threaded one uses at
        # most one core (a little more: the 10 ms ticks of /proc round up or down).
        assert 1 < r["cpu_us_per_request"] < 1000, r
        assert 0.05 < r["cpu_share"] < 1.1, r
    # Each proxy alone on the last CPU; wrk and the backends were on the others.
    last = max(os.sched_getaffinity(0))
    for r in (haproxy, mcplb, reference):
        assert r["cpus"] == [last], r
    assert f"proxies on CPU {last}; wrk and the backends on the others" in run.stdout
    assert haproxy["cpu_ratio_haproxy"] == 1.0
    for r in (mcplb, reference):
        assert r["cpu_ratio_haproxy"] == r["cpu_us_per_request"] / haproxy["cpu_us_per_request"]
    assert "CPU µs/req" in run.stdout and "CPU /haproxy" in run.stdout
