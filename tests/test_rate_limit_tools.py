"""Per-tool rate rules (``rate_limit.tools``; issue 25 item 5): a tools/call takes a token
from its client's bucket under the first rule whose name (exact, or a glob of ``*`` and
``?``) matches the tool, besides the client's main bucket; keyed per client as the main
limiter is, in the same store (memory, or Redis shared by replicas).

The tool name is the one read from the body (in 2026-07-28, after its ``Mcp-Name`` was
checked against it): never a header's claim. A call whose tool cannot be read (a body past
the 64 KiB read bound, a batch, a name too long) counts against every rule, so padding a
body is no way around a limit. State is per rule and client, never per tool name; the
metrics label is the rule's name from the config.

Real ``mcplb run`` processes in front of the SDK's demo backend (memory and a real
redis-server, two replicas sharing it); in-process proxies where the test reads the
limiter's state; the config's keys and errors; the pure matching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import RateLimitConfig, ToolRateConfig
from mcplb.proxy.relay.mcp_method import called_tool
from mcplb.proxy.routing.rate_limit import UNKNOWN_TOOL, MemoryRateLimiter, ToolRules
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.peers import Peers, free_port
from tests.support.redis_server import RedisServer

EXPENSIVE = ToolRateConfig(name="expensive_*", rate=1 / 3600, burst=2)
MODERN = "2026-07-28"


def call_body(tool: str, padding: int = 0, modern: bool = False) -> bytes:
    params: dict[str, Any] = {"name": tool, "arguments": {"pad": "p" * padding}}
    if modern:
        params["_meta"] = {"io.modelcontextprotocol/protocolVersion": MODERN}
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    ).encode()


def call_headers(header_name: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if header_name is not None:
        headers |= {
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": header_name,
        }
    return headers


async def post(
    http: aiohttp.ClientSession,
    url: str,
    tool: str,
    *,
    padding: int = 0,
    header_name: str | None = None,
) -> aiohttp.ClientResponse:
    body = call_body(tool, padding, modern=header_name is not None)
    async with http.post(url, data=body, headers=call_headers(header_name)) as response:
        await response.read()
        return response


def proxy_yaml(port: int, backend_url: str, rate_limit: str) -> str:
    return f"""
listen: "127.0.0.1:{port}"
backends: [{{name: a, url: "{backend_url}"}}]
rate_limit:
{rate_limit}
"""


TOOL_RULES = """  rate: 1000
  burst: 1000
  tools:
    - {name: "expensive_*", rate: 1/h, burst: 2}
    - {name: whoami, rate: 1/h, burst: 5}
"""


# -- real processes -------------------------------------------------------------------


async def test_a_rule_limits_the_tools_it_names_per_client(peers: Peers, tmp_path: Path) -> None:
    backend = await peers.backend("mcp-a", stateless=True, json_response=True)
    port = free_port()
    proxy = await peers.proxy(proxy_yaml(port, backend.url, TOOL_RULES), tmp_path, port=port)
    async with aiohttp.ClientSession() as http:
        url = proxy.mcp_url
        # One bucket for the rule, whatever tool of it is called.
        assert (await post(http, url, "expensive_a")).status != 429
        assert (await post(http, url, "expensive_b")).status != 429
        refused = await post(http, url, "expensive_c")
        assert refused.status == 429
        assert refused.headers["RateLimit-Policy"] == '"expensive_*";q=2;w=7200'
        assert int(refused.headers["Retry-After"]) > 0
        # Other tools and methods: their own rule, or only the main bucket.
        for _ in range(5):
            assert (await post(http, url, "whoami")).status != 429
        assert (await post(http, url, "whoami")).status == 429
        for _ in range(10):
            assert (await post(http, url, "add")).status != 429
        # Exact names are exact, and case-sensitive.
        assert (await post(http, url, "Expensive_a")).status != 429
        assert (await post(http, url, "whoami2")).status != 429


async def test_a_padded_body_or_a_lying_header_counts_against_the_rules(
    peers: Peers, tmp_path: Path
) -> None:
    backend = await peers.backend("mcp-a", stateless=True, json_response=True)
    port = free_port()
    proxy = await peers.proxy(proxy_yaml(port, backend.url, TOOL_RULES), tmp_path, port=port)
    async with aiohttp.ClientSession() as http:
        url = proxy.mcp_url
        # A header naming a cheap tool over a body calling an expensive one: refused by
        # the 2026-07-28 validation (400), never counted under the header's name.
        lying = await post(http, url, "expensive_a", header_name="add")
        assert lying.status == 400
        # Past the 64 KiB read bound the tool cannot be read: every rule's token is taken
        # (a client cannot pad its way past the limit).
        assert (await post(http, url, "add", padding=70_000)).status != 429
        assert (await post(http, url, "add", padding=70_000, header_name="add")).status != 429
        assert (await post(http, url, "expensive_a")).status == 429  # two tokens spent
        # A name longer than any tool's (past mcp_era.MAX_VALUE): unknown, every rule.
        assert (await post(http, url, "expensive_" + "x" * 5000)).status == 429
        for _ in range(3):  # whoami's rule had 5: the two padded calls took one each
            assert (await post(http, url, "whoami")).status != 429
        assert (await post(http, url, "whoami")).status == 429
        # The validated Mcp-Name (matching the body) is the rule's key in 2026-07-28 too.
        assert (await post(http, url, "expensive_z", header_name="expensive_z")).status == 429


async def test_redis_shares_the_rule_between_replicas(
    peers: Peers, tmp_path: Path, redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    backend = await peers.backend("mcp-a", stateless=True, json_response=True)
    rules = TOOL_RULES + f'  store: redis\n  redis: {{url: "{redis_server.url}"}}\n'
    one_port, two_port = free_port(), free_port()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = await peers.proxy(
        proxy_yaml(one_port, backend.url, rules), tmp_path / "one", port=one_port
    )
    two = await peers.proxy(
        proxy_yaml(two_port, backend.url, rules), tmp_path / "two", port=two_port
    )
    async with aiohttp.ClientSession() as http:
        assert (await post(http, one.mcp_url, "expensive_a")).status != 429
        assert (await post(http, two.mcp_url, "expensive_b")).status != 429
        assert (await post(http, one.mcp_url, "expensive_c")).status == 429
        assert (await post(http, two.mcp_url, "expensive_d")).status == 429
        # 1,000 distinct tool names: one bucket per rule and client in Redis, not per name.
        for n in range(1000):
            await post(http, two.mcp_url, f"expensive_{n}")
            await post(http, two.mcp_url, f"tool_{n}")
    keys = sorted(await raw.keys("mcplb:ratelimit:*"))
    assert keys == [
        "mcplb:ratelimit:a:127.0.0.1",
        "mcplb:ratelimit:t:expensive_*:a:127.0.0.1",
    ]


# -- in process: state and metrics -----------------------------------------------------


def ok_app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handle)
    return application


async def test_a_thousand_tool_names_do_not_grow_state_or_labels(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    limit = RateLimitConfig(rate=1000.0, burst=5000, tools=(EXPENSIVE,))
    proxy = await start_proxy([backend_config("a", await serve_app(ok_app()))], rate_limit=limit)
    url = f"http://127.0.0.1:{proxy.port}/mcp"
    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:
        for n in range(1000):
            statuses.append((await post(http, url, f"expensive_{n}\u00e9")).status)
            statuses.append((await post(http, url, f"other_{n}")).status)
    assert statuses.count(429) == 998  # two expensive calls, then refused
    limiter = proxy.runtime.frontend.rate_limiter
    assert isinstance(limiter, MemoryRateLimiter)
    assert len(limiter) == 2  # the client's main bucket and its bucket under the rule
    stats = proxy.runtime.stats
    assert dict(stats.tool_rate_limited) == {"expensive_*": 998}
    assert stats.rejected["rate_limited"] == 998


async def test_legacy_and_modern_calls_read_within_the_bound_are_limited_by_name(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    """Also with request_buffer 0 and Expect: the tool rules read the body themselves."""
    limit = RateLimitConfig(rate=1000.0, burst=1000, tools=(EXPENSIVE,))
    proxy = await start_proxy(
        [backend_config("a", await serve_app(ok_app()))],
        rate_limit=limit,
        limits={"request_buffer": 0},
    )
    url = f"http://127.0.0.1:{proxy.port}/mcp"
    async with aiohttp.ClientSession() as http:
        headers = call_headers() | {"Expect": "100-continue"}
        async with http.post(url, data=call_body("expensive_a"), headers=headers) as response:
            assert response.status == 200
        assert (await post(http, url, "expensive_b", header_name="expensive_b")).status == 200
        assert (await post(http, url, "cheap", padding=60_000)).status == 200  # read: by name
        assert (await post(http, url, "expensive_c")).status == 429


# -- config ------------------------------------------------------------------------------


def test_the_rules_read_from_yaml() -> None:
    config = parse_config(
        """
backends: [{name: a, url: "http://127.0.0.1:9001"}]
rate_limit:
  rate: 10
  tools:
    - {name: "search_*", rate: 10/m, burst: 3}
    - {name: delete_everything, rate: 1/h}
"""
    )
    assert config.rate_limit is not None
    assert config.rate_limit.tools == (
        ToolRateConfig("search_*", 10 / 60, 3),
        ToolRateConfig("delete_everything", 1 / 3600, 1),
    )


@pytest.mark.parametrize(
    ("rules", "path", "message"),
    [
        ('[{name: "a b", rate: 1}]', "rate_limit.tools[0].name", "tool name or a glob"),
        ('[{name: "x[ab]", rate: 1}]', "rate_limit.tools[0].name", "tool name or a glob"),
        (f'[{{name: "{"n" * 129}", rate: 1}}]', "rate_limit.tools[0].name", "1 to 128"),
        ("[{name: a}]", "rate_limit.tools[0]", 'missing required key "rate"'),
        ("[{name: a, rate: 1, burst: 0}]", "rate_limit.tools[0].burst", ">= 1"),
        ("[{name: a, rate: 1}, {name: a, rate: 2}]", "rate_limit.tools[1].name", "duplicate"),
        ("[{name: a, rate: 1, per: client}]", "rate_limit.tools[0].per", "unknown"),
        ("search_*", "rate_limit.tools", "must be a list of rules"),
    ],
)
def test_bad_rules_are_named_by_path_and_line(rules: str, path: str, message: str) -> None:
    text = f"""backends: [{{name: a, url: "http://127.0.0.1:9001"}}]
rate_limit:
  rate: 10
  tools: {rules}
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    issues = [i for i in raised.value.issues if i.path == path]
    assert issues, raised.value.issues
    assert message in issues[0].message
    assert issues[0].line == 4


# -- pure --------------------------------------------------------------------------------


def test_the_first_matching_rule_applies_and_an_unknown_tool_takes_every_rule() -> None:
    rules = ToolRules(
        (
            ToolRateConfig("search_web", 1.0, 1),
            ToolRateConfig("search_*", 2.0, 2),
            ToolRateConfig("?b", 3.0, 3),
        )
    )
    assert [r.name for r in rules.applying("search_web")] == ["search_web"]
    assert [r.name for r in rules.applying("search_docs")] == ["search_*"]
    assert [r.name for r in rules.applying("ab")] == ["?b"]
    assert rules.applying("abc") == ()
    assert rules.applying("SEARCH_web") == ()
    assert rules.applying("search_\n") != ()  # "*" is any run, newlines included
    assert [r.name for r in rules.applying(UNKNOWN_TOOL)] == ["search_web", "search_*", "?b"]
    long = "search_" + "*" * 1024
    assert [r.name for r in rules.applying(long)] == ["search_*"]


def test_many_stars_match_a_long_name_quickly() -> None:
    (rule,) = ToolRules((ToolRateConfig("*a*a*a*a*a*b", 1.0, 1),)).rules
    assert rule.match("a" * 1024) is None  # the atomic groups of fnmatch: no blow-up


@pytest.mark.parametrize(
    ("message", "tool"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}}, "t"),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, None),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, None),  # a response
        ({"method": "tools/call", "params": {"name": 5}}, UNKNOWN_TOOL),
        ({"method": "tools/call", "params": {"name": "x" * 1025}}, UNKNOWN_TOOL),
        ({"method": "tools/call"}, UNKNOWN_TOOL),
        ([{"method": "tools/call", "params": {"name": "t"}}], UNKNOWN_TOOL),  # a batch
        (None, UNKNOWN_TOOL),  # not JSON
    ],
)
def test_the_tool_a_body_calls(message: object, tool: str | None) -> None:
    assert called_tool(message) == tool
