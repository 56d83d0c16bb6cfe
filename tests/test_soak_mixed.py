"""The short mixed-era soak (``bench/soak.py --mixed``, 30 s of load; ``make soak`` runs
the same program for 10 minutes): two mcplb replicas of two workers each, the Redis store
behind Sentinel, edge auth with the soak's own JWKS, DNS discovery from dnsmasq, and every
traffic shape at once: Python SDK Streamable HTTP sessions (short and long), hand-made
Streamable HTTP sessions with their GET stream, the 2024-11-05 HTTP+SSE transport (Python
SDK), TypeScript SDK 1.32 sessions, sessionless 2026-07-28 requests, tasks,
``subscriptions/listen`` streams, refused tokens, plain HTTP. Faults on a schedule: a
backend SIGKILLed and restarted, a backend added and removed by reloads, a worker SIGKILLed,
an address removed from DNS, the Redis master SIGKILLed (Sentinel failover), a replica
SIGTERMed (graceful drain) and restarted.

The soak's own classification decides (every failure expected, named by its fault, or
unexpected); here: no unexpected failure, no failed fault check (that includes a lost
listen event, a leaked descriptor and RSS growth past the bounds the soak states), every
traffic kind succeeded many times, every fault happened and ended."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATION = 30  # the soak's minimum: each fault needs its room
KINDS = (
    "short.",
    "long.",
    "sse.",
    "http.",
    "modern.tools/call",
    "modern.task",
    "modern.listen stream",
    "legacy-sse.",
    "ts-sdk.session",
    "auth.refused",
)


def test_short_mixed_era_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        "--mixed",
        f"--duration={DURATION}",
        "--down=4",
        "--clients=8",
        f"--json={out}",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=DURATION + 150)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    report = data["results"]
    assert report["requests"]["failed_unexpected"] == 0
    assert report["findings"] == []
    assert report["mcplb_log"]["tracebacks"] == 0
    for prefix in KINDS:
        ok = sum(v["ok"] for k, v in report["by_kind"].items() if k.startswith(prefix))
        assert ok >= 1, (prefix, report["by_kind"])
    mixed = report["mixed"]
    assert mixed["listen_events"] > 20 and mixed["lost_events"] == 0
    for moment in ("worker_back", "dns_applied", "replica_ready"):
        assert mixed[moment] is not None, mixed
    timeline = data["timeline"]
    for moment in ("restart_ready", "reload_remove", "redis_up"):
        assert timeline[moment] is not None, timeline
    assert mixed["sentinel_switch_s"] is not None
    assert {f["replica"] for f in mixed["fds"] if f["start"] and f["end"]} == {0}
    print(f"\n{run.stdout[-4000:]}")
