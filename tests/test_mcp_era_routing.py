"""Era-aware routing, without processes: which era a request that opens no session speaks
(``steps.request_era``), which candidates may serve it (``steps.era_candidates``: none of
those the MCP probe found to speak only the other era; all of them when that leaves none),
the cached lists a strategy keeps its index for, and how the probing worker's knowledge of
the eras reaches the other workers (``HealthMonitor.verdicts``/``adopt``). The same with
real servers of both eras and real clients: tests/test_mixed_era.py."""

from __future__ import annotations

import dataclasses

from mcplb.healthcheck.monitor import HealthMonitor
from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.config.schema import ActiveHealthConfig, HealthConfig
from mcplb.proxy.relay.request import Request
from mcplb.proxy.routing import steps
from mcplb.proxy.routing.mcp_era import read_head, validate
from tests.conftest import FakeClock, backend_config

MODERN_HEADERS = [
    (b"mcp-protocol-version", b"2026-07-28"),
    (b"mcp-method", b"tools/call"),
    (b"mcp-name", b"whoami"),
]
MODERN_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami",'
    b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
)


def backends(*names: str) -> list[Backend]:
    return [Backend(backend_config(name, 9000 + i)) for i, name in enumerate(names)]


def request(method: bytes = b"POST", *, session: str | None = None) -> Request:
    r = Request()
    r.method = method
    r.session_id = session
    return r


def test_request_era() -> None:
    modern = request()
    modern.verdict = validate(read_head(MODERN_HEADERS), MODERN_BODY)
    assert steps.request_era(modern) == "modern"
    assert steps.request_era(request()) == "legacy"  # an initialize, a stateless 2025 call
    assert steps.request_era(request(session="s1")) is None  # its session decides
    assert steps.request_era(request(b"GET")) is None  # not a stream, not MCP
    stream = request(b"GET")
    stream.wants_stream = True  # an HTTP+SSE stream opens a 2025 session
    assert steps.request_era(stream) == "legacy"
    dual, legacy_only, modern_only = backends("dual", "old", "new")
    known = {"old": "legacy", "new": "modern"}
    everyone = [dual, legacy_only, modern_only]
    assert steps.era_candidates(everyone, known, "modern") == [dual, modern_only]
    assert steps.era_candidates(everyone, known, "legacy") == [dual, legacy_only]
    # None fit: all of them (the client gets the server's own answer, and may fall back).
    assert steps.era_candidates([legacy_only], known, "modern") == [legacy_only]


def test_era_lists_are_cached_by_identity() -> None:
    """A strategy keeps an index for a list it gets again (round_robin's O(1) schedule):
    the filtered list is the same object while the candidates and the era map are."""
    candidates = backends("a", "b", "c")
    known = {"b": "legacy"}
    lists = steps._EraLists()
    first = lists.of(candidates, known, "modern")
    assert [b.name for b in first] == ["a", "c"]
    assert lists.of(candidates, known, "modern") is first
    assert [b.name for b in lists.of(candidates, known, "legacy")] == ["a", "b", "c"]
    assert lists.of(candidates, known, "modern") is first
    assert lists.of(candidates, {"b": "legacy"}, "modern") is not first  # a new era map
    assert lists.of(list(candidates), known, "modern") is not first  # a new candidate list


def test_the_probing_workers_eras_reach_the_others() -> None:
    cfg = dataclasses.replace(HealthConfig(), active=ActiveHealthConfig(enabled=True, type="mcp"))
    clock = FakeClock()
    prober = HealthMonitor(cfg, backends("dual", "old", "new"), clock=clock)
    follower = HealthMonitor(cfg, backends("dual", "old", "new"), clock=clock, probing=False)
    for name, era in (("dual", "both"), ("old", "legacy"), ("new", "modern")):
        prober._learn_era(name, era)
    assert prober.mcp_eras == {"old": "legacy", "new": "modern"}  # dual-era: no entry
    follower.adopt(prober.verdicts())
    assert follower.mcp_eras == {"old": "legacy", "new": "modern"}
    assert {n: s.get("mcp_eras") for n, s in follower.status().items()} == {
        "dual": "both",
        "old": "legacy",
        "new": "modern",
    }
    before = prober.mcp_eras
    prober._learn_era("new", "modern")  # nothing new: the same map (cached lists stay)
    assert prober.mcp_eras is before
    prober._learn_era("new", None)  # unknown again (redeployed: the probe relearns)
    assert prober.mcp_eras == {"old": "legacy"} and prober.mcp_eras is not before
    # A verdict of an older worker, without eras, is still taken.
    follower.adopt({name: verdict[:3] for name, verdict in prober.verdicts().items()})
    assert follower.mcp_eras == {}
