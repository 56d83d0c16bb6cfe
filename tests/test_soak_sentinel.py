"""The short soak with Redis Sentinel (``bench/soak.py --sentinel``, 30 s): mixed MCP load
(SDK sessions short and long, legacy-style SSE streams, plain HTTP) through a real mcplb
with two workers, while a backend is killed and restarted, two reloads add and remove a
backend, and the Redis master is killed (the sentinels promote the replica). The soak's
own classification decides: no unexpected failure, no failed fault check, every worker's
session store back on Redis (the new master) before the end, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATION = 30  # the soak's minimum: each fault needs its room


def test_short_soak_with_a_sentinel_failover(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        f"--duration={DURATION}",
        "--clients=8",
        "--sentinel",
        "--redis-outage-expected",
        f"--json={out}",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=DURATION + 90)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())["results"]
    assert report["requests"]["failed_unexpected"] == 0
    assert report["requests"]["sent"] > 200  # the load ran (about 3,500 on an idle machine)
    assert report["findings"] == []
    assert report["mcplb_log"]["tracebacks"] == 0
    windows = report["redis_store_local_only"]
    assert windows, "the master's death was not seen by any worker"
    assert all(w["to_s"] is not None for w in windows), windows
    print(f"\n{run.stdout[-2500:]}")
