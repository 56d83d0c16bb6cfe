"""The era of an MCP request and its SEP-2243 routing headers against its body, fed as
values (proxy/routing/mcp_era.py), and the task a 2026-07-28 answer creates
(proxy/routing/mcp_tasks.py). Attack cases: case games, whitespace, unicode, duplicate
headers, batches, huge values, non-object params, numbers for strings."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from mcplb.proxy.routing import mcp_era, mcp_tasks
from mcplb.proxy.routing.mcp_era import Head, read_head, validate

V = b"2026-07-28"


def b64(text: str) -> bytes:
    return b"=?base64?" + base64.b64encode(text.encode("utf-8")) + b"?="


def body(method: Any = "tools/call", params: Any = None, rid: Any = 1, **extra: Any) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if rid is not None:
        message["id"] = rid
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def judge(headers: list[tuple[bytes, bytes]], raw: bytes | None) -> mcp_era.Verdict:
    return validate(read_head([(n.lower(), v) for n, v in headers]), raw)


def modern(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"MCP-Protocol-Version", V), *extra]


CALL = body("tools/call", {"name": "echo", "arguments": {"text": "hi"}})


# --- era ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "is_modern"),
    [
        ("2026-07-28", True),
        ("2027-01-15", True),  # a later revision is modern too
        ("2025-11-25", False),
        ("2025-06-18", False),
        ("2024-11-05", False),
        ("2026-07-27", False),
        ("DRAFT-2026-v1", False),
        ("2026-7-28", False),
        ("2026-07-28x", False),
        (" 2026-07-28", False),  # untrimmed text is not a revision (read_head trims OWS)
        ("", False),
        ("9999-99-99", True),  # a dated revision later than any known: modern
        ("\uff12\uff10\uff12\uff16-07-28", False),  # fullwidth digits are not ASCII digits
    ],
)
def test_revision_era(version: str, is_modern: bool) -> None:
    assert mcp_era.is_modern_version(version) is is_modern


def test_era_from_the_header_trims_ows_and_ignores_name_case() -> None:
    assert read_head([(b"mcp-protocol-version", b" \t2026-07-28 ")]).modern
    assert not read_head([]).modern
    assert not read_head([(b"mcp-protocol-version", b"2025-11-25")]).modern


def test_server_discover_without_the_header_is_modern() -> None:
    raw = body("server/discover", {"_meta": {mcp_era.META_VERSION: "2026-07-28"}})
    verdict = judge([], raw)
    assert verdict.modern and verdict.refusal is None and verdict.method == "server/discover"


def test_legacy_requests_take_nothing_from_routing_headers() -> None:
    # A 2025 request with lying headers: not refused (the headers mean nothing in that era),
    # and every value used comes from the body.
    verdict = judge(
        [(b"MCP-Protocol-Version", b"2025-11-25"), (b"Mcp-Method", b"tools/list")], CALL
    )
    assert not verdict.modern and verdict.refusal is None
    assert (verdict.method, verdict.name) == ("tools/call", "echo")
    no_version = judge([(b"Mcp-Method", b"ping"), (b"Mcp-Name", b"drop_tables")], CALL)
    assert not no_version.modern and no_version.refusal is None and no_version.name == "echo"


# --- what is accepted --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "name"),
    [
        ("tools/call", {"name": "get_weather", "arguments": {}}, b"get_weather"),
        ("prompts/get", {"name": "code_review"}, b"code_review"),
        ("resources/read", {"uri": "file:///projects/a%20b.json"}, b"file:///projects/a%20b.json"),
        (
            "resources/read",
            {"uri": "https://example.com/r?id=123"},
            b"https://example.com/r?id=123",
        ),
        ("tasks/get", {"taskId": "786512e2-9e0d"}, b"786512e2-9e0d"),
        ("tasks/update", {"taskId": "t1", "inputResponses": {}}, b"t1"),
        ("tasks/cancel", {"taskId": "t1"}, b"t1"),
        ("tools/call", {"name": "my-tool_name.v2"}, b"my-tool_name.v2"),
        ("tools/call", {"name": "us west 1"}, b"us west 1"),  # inner spaces are plain
    ],
)
def test_matching_headers_pass(method: str, params: dict[str, Any], name: bytes) -> None:
    verdict = judge(
        modern((b"Mcp-Method", method.encode()), (b"Mcp-Name", name)), body(method, params)
    )
    assert verdict.refusal is None and verdict.modern
    assert verdict.method == method and verdict.name == name.decode()
    assert verdict.task_id == (name.decode() if method.startswith("tasks/") else "")


@pytest.mark.parametrize(
    "header_name", [b"mcp-method", b"MCP-METHOD", b"Mcp-Method", b"mCp-MeThOd"]
)
def test_header_names_are_case_insensitive(header_name: bytes) -> None:
    verdict = judge(modern((header_name, b"tools/call"), (b"MCP-NAME", b"echo")), CALL)
    assert verdict.refusal is None


@pytest.mark.parametrize("value", [b" echo", b"echo ", b"\techo\t", b"  echo  "])
def test_optional_whitespace_around_a_value_is_trimmed(value: bytes) -> None:
    verdict = judge(modern((b"Mcp-Method", b" tools/call "), (b"Mcp-Name", value)), CALL)
    assert verdict.refusal is None


@pytest.mark.parametrize(
    "name",
    [
        "Hello, 世界",
        " padded ",
        "line1\nline2",
        "line1\r\nline2",
        "\tindented",
        "=?base64?literal?=",
        "日本語",
        "emoji 🎉",
        "nul\x00byte",
    ],
)
def test_base64_names_are_decoded_before_comparing(name: str) -> None:
    raw = body("tools/call", {"name": name})
    assert (
        judge(modern((b"Mcp-Method", b"tools/call"), (b"Mcp-Name", b64(name))), raw).refusal is None
    )
    # and the same name sent as base64 of something else is a mismatch
    other = judge(modern((b"Mcp-Method", b"tools/call"), (b"Mcp-Name", b64(name + "x"))), raw)
    assert other.refusal is not None and "does not match" in other.refusal


def test_spec_encoding_examples_decode() -> None:
    assert mcp_era.decode_name(b"=?base64?SGVsbG8sIOS4lueVjA==?=") == "Hello, 世界"
    assert mcp_era.decode_name(b"=?base64?IHBhZGRlZCA=?=") == " padded "
    assert mcp_era.decode_name(b"=?base64?bGluZTEKbGluZTI=?=") == "line1\nline2"
    assert mcp_era.decode_name(b"=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=") == "=?base64?literal?="
    assert mcp_era.decode_name(b"=?base64?SGVsbG8=?=") == "Hello"


@pytest.mark.parametrize(
    ("raw", "literal"),
    [
        (b"SGVsbG8=", "SGVsbG8="),  # missing prefix: a literal
        (b"=?base64?SGVsbG8=", "=?base64?SGVsbG8="),  # missing suffix: a literal
        (b"=?BASE64?SGVsbG8=?=", "=?BASE64?SGVsbG8=?="),  # markers are lowercase only
        (b"=?Base64?SGVsbG8=?=", "=?Base64?SGVsbG8=?="),
    ],
)
def test_not_quite_the_sentinel_is_a_literal(raw: bytes, literal: str) -> None:
    assert mcp_era.decode_name(raw) == literal
    # so it matches a body carrying that literal, and not the decoded text
    ok = judge(modern((b"Mcp-Name", raw)), body("tools/call", {"name": literal}))
    assert ok.refusal is None
    bad = judge(modern((b"Mcp-Name", raw)), body("tools/call", {"name": "Hello"}))
    assert bad.refusal is not None


def test_no_routing_headers_on_a_modern_request_is_left_to_the_server() -> None:
    verdict = judge(modern(), CALL)
    assert verdict.refusal is None and verdict.modern and verdict.name == "echo"


def test_mcp_param_headers_are_not_read() -> None:
    verdict = judge(
        modern(
            (b"Mcp-Method", b"tools/call"),
            (b"Mcp-Param-Region", b"=?base64?!!!?="),
            (b"Mcp-Param-Region", b"twice"),
            (b"mcp-param-", b"\xff"),
        ),
        CALL,
    )
    assert verdict.refusal is None


# --- what is refused ---------------------------------------------------------------------


def refused(headers: list[tuple[bytes, bytes]], raw: bytes | None) -> str:
    verdict = judge(headers, raw)
    assert verdict.refusal is not None, "expected a refusal"
    return verdict.refusal


@pytest.mark.parametrize(
    ("headers", "raw", "why"),
    [
        # Mcp-Method
        (modern((b"Mcp-Method", b"tools/list")), CALL, "does not match"),
        (
            modern((b"Mcp-Method", b"TOOLS/CALL")),
            CALL,
            "does not match",
        ),  # values are case-sensitive
        (modern((b"Mcp-Method", b"tools/call\x00")), CALL, "does not match"),
        (modern((b"Mcp-Method", b"tools/call.")), CALL, "does not match"),
        (modern((b"Mcp-Method", b"tools\\/call")), CALL, "does not match"),
        (modern((b"Mcp-Method", b"")), CALL, "does not match"),
        (modern((b"Mcp-Method", "tools/c\u0430ll".encode())), CALL, "does not match"),  # Cyrillic a
        # Mcp-Name
        (modern((b"Mcp-Name", b"drop_tables")), CALL, "does not match"),
        (modern((b"Mcp-Name", b"ECHO")), CALL, "does not match"),
        (modern((b"Mcp-Name", b"")), CALL, "does not match"),
        (modern((b"Mcp-Name", b"ech o")), CALL, "does not match"),
        (modern((b"Mcp-Name", b"=?base64?ZWNobw?=")), CALL, "malformed"),  # bad padding
        (modern((b"Mcp-Name", b"=?base64?SGVs!!!bG8=?=")), CALL, "malformed"),  # bad characters
        (modern((b"Mcp-Name", b"=?base64?ZWNo bw==?=")), CALL, "malformed"),  # inner space
        (modern((b"Mcp-Name", b"=?base64?ZWNobw==\n?=")), CALL, "malformed"),
        (modern((b"Mcp-Name", b"=?base64?/w==?=")), CALL, "malformed"),  # 0xff: not UTF-8
        (modern((b"Mcp-Name", b"=?base64?ZWNobw-_?=")), CALL, "malformed"),  # url-safe alphabet
        (
            modern((b"Mcp-Name", "\u00e9ch\u043e".encode())),
            CALL,
            "malformed",
        ),  # raw UTF-8 in a field
        (modern((b"Mcp-Name", b"ech\x7fo")), CALL, "malformed"),
        (modern((b"Mcp-Name", b"ech\x01o")), CALL, "malformed"),
        # a header present where the body has no such field
        (modern((b"Mcp-Name", b"x")), body("tools/list"), "has none"),
        (modern((b"Mcp-Name", b"x")), body("server/discover", {}), "has none"),
        (modern((b"Mcp-Name", b"echo")), body("tools/call"), "no string params.name"),
        (modern((b"Mcp-Name", b"echo")), body("tools/call", []), "no string params.name"),
        (modern((b"Mcp-Name", b"echo")), body("tools/call", "echo"), "no string params.name"),
        (modern((b"Mcp-Name", b"echo")), body("tools/call", {"name": None}), "no string"),
        (modern((b"Mcp-Name", b"echo")), body("tools/call", {"name": ["echo"]}), "no string"),
        (modern((b"Mcp-Name", b"echo")), body("tools/call", {"Name": "echo"}), "no string"),
        (modern((b"Mcp-Name", b"f")), body("resources/read", {"name": "f"}), "params.uri"),
        (modern((b"Mcp-Name", b"t")), body("tasks/get", {"name": "t"}), "params.taskId"),
        # numbers are not strings
        (modern((b"Mcp-Name", b"42")), body("tasks/get", {"taskId": 42}), "no string"),
        (modern((b"Mcp-Name", b"42")), body("tasks/get", {"taskId": 42.0}), "no string"),
        (modern((b"Mcp-Name", b"true")), body("tools/call", {"name": True}), "no string"),
        (modern((b"Mcp-Method", b"1")), body(1), "not one JSON-RPC request"),
        # twice
        (
            modern((b"Mcp-Method", b"tools/call"), (b"Mcp-Method", b"tools/call")),
            CALL,
            "more than once",
        ),
        (
            modern((b"Mcp-Method", b"tools/list"), (b"mcp-method", b"tools/call")),
            CALL,
            "more than once",
        ),
        (modern((b"Mcp-Name", b"echo"), (b"MCP-NAME", b"echo")), CALL, "more than once"),
        (modern((b"MCP-Protocol-Version", b"2025-11-25")), CALL, "more than once"),
        (
            [(b"MCP-Protocol-Version", b"2025-11-25"), (b"MCP-Protocol-Version", V)],
            CALL,
            "more than once",
        ),
        # the body is not one request
        (modern((b"Mcp-Method", b"tools/call")), b"[" + CALL + b"]", "not one JSON-RPC request"),
        (modern((b"Mcp-Method", b"tools/call")), b"[]", "not one JSON-RPC request"),
        (
            modern((b"Mcp-Method", b"tools/call")),
            b'{"jsonrpc":"2.0","id":1,"result":{}}',
            "not one",
        ),
        (modern((b"Mcp-Method", b"tools/call")), b"not json", "not one JSON-RPC request"),
        (modern((b"Mcp-Method", b"tools/call")), b"\xff\xfe{}", "not one JSON-RPC request"),
        (modern((b"Mcp-Method", b"tools/call")), b"[" * 100 + b"]" * 100, "not one"),
        (modern((b"Mcp-Method", b"tools/call")), b"", "not one JSON-RPC request"),
        # the header's version against the body's
        (
            modern(),
            body("tools/call", {"name": "echo", "_meta": {mcp_era.META_VERSION: "2025-11-25"}}),
            "MCP-Protocol-Version",
        ),
        (
            modern(),
            body("tools/call", {"name": "echo", "_meta": {mcp_era.META_VERSION: 20260728}}),
            "MCP-Protocol-Version",
        ),
    ],
)
def test_refused(headers: list[tuple[bytes, bytes]], raw: bytes | None, why: str) -> None:
    assert why in refused(headers, raw)


def test_an_unread_body_takes_nothing_from_the_headers() -> None:
    verdict = judge(modern((b"Mcp-Method", b"tasks/get"), (b"Mcp-Name", b"t1")), None)
    assert verdict.modern and verdict.refusal is None
    assert (verdict.method, verdict.name, verdict.task_ids) == ("", "", ())
    repeated = judge(modern((b"Mcp-Name", b"a"), (b"Mcp-Name", b"b")), None)
    assert repeated.refusal is not None  # two copies are refused whatever the body


def test_repeated_identical_protocol_versions_are_one() -> None:
    assert judge(modern((b"mcp-protocol-version", V)), CALL).refusal is None


def test_duplicate_json_keys_take_the_last_like_the_servers() -> None:
    # Python's json and JavaScript's JSON.parse both keep the last duplicate key: the body
    # value mcplb compares is the one the server executes.
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"drop"}}'
    assert judge(modern((b"Mcp-Name", b"drop")), raw).refusal is None
    assert judge(modern((b"Mcp-Name", b"echo")), raw).refusal is not None
    raw = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
        b'"params":{"name":"a"}}'
    )
    assert judge(modern((b"Mcp-Method", b"tools/list")), raw).refusal is not None


def test_json_escapes_in_the_body_are_compared_decoded() -> None:
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"\\u0065cho"}}'
    assert (
        judge(modern((b"Mcp-Method", b"tools/call"), (b"Mcp-Name", b"echo")), raw).refusal is None
    )


def test_huge_values_are_refused_and_never_quoted_whole() -> None:
    big = "a" * 100_000
    raw = body("tools/call", {"name": big})
    why = refused(modern((b"Mcp-Name", big.encode())), raw)
    assert len(why) < 300
    why = refused(modern((b"Mcp-Method", b"x" * 100_000)), CALL)
    assert len(why) < 300
    # a huge id is not echoed either
    verdict = judge(
        modern((b"Mcp-Name", b"nope")), body("tools/call", {"name": "echo"}, rid="i" * 5000)
    )
    assert verdict.message_id is None


def test_a_large_but_bounded_name_matches() -> None:
    name = "n" * mcp_era.MAX_VALUE
    assert (
        judge(modern((b"Mcp-Name", name.encode())), body("tools/call", {"name": name})).refusal
        is None
    )


# --- the refusal answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "echoed"),
    [(7, 7), ("abc", "abc"), (None, None), (1.5, None), (True, None), ({"x": 1}, None), (-3, -3)],
)
def test_mismatch_body_is_the_specs_error_with_the_request_id(rid: Any, echoed: Any) -> None:
    raw = (
        body("tools/call", {"name": "echo"}, rid=rid)
        if rid is not None
        else body("tools/call", {"name": "echo"}, rid=None)
    )
    verdict = judge(modern((b"Mcp-Method", b"tools/list")), raw)
    answer = json.loads(mcp_era.mismatch_body(verdict))
    assert answer == {
        "jsonrpc": "2.0",
        "id": echoed,
        "error": {"code": -32020, "message": answer["error"]["message"]},
    }
    assert answer["error"]["message"].startswith(
        "Header mismatch: Mcp-Method header value 'tools/list'"
    )


def test_mismatch_body_is_ascii_even_for_unicode_values() -> None:
    verdict = judge(modern((b"Mcp-Name", b64("世界"))), body("tools/call", {"name": "echo"}))
    out = mcp_era.mismatch_body(verdict)
    out.decode("ascii")
    assert "世界" in json.loads(out)["error"]["message"]


# --- subscriptions/listen and task ids ---------------------------------------------------


def test_listen_task_ids_are_read_bounded() -> None:
    params = {"notifications": {"taskIds": ["a", 3, "", "b", None, "x" * 5000] + ["c"] * 30}}
    verdict = judge(
        modern((b"Mcp-Method", b"subscriptions/listen")), body("subscriptions/listen", params)
    )
    assert verdict.refusal is None
    assert verdict.task_ids[:2] == ("a", "b") and len(verdict.task_ids) <= 16
    assert (
        judge(modern(), body("subscriptions/listen", {"notifications": {"taskIds": "a"}})).task_ids
        == ()
    )


def test_head_see_one_field_at_a_time() -> None:
    head = Head()
    head.see(b"mcp-method", b"tools/call")
    head.see(b"content-type", b"application/json")
    assert head.claims and not head.modern and head.repeated is None


# --- the task a result creates -----------------------------------------------------------

CREATED: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "resultType": "task",
        "taskId": "786512e2-9e0d-44bd-8f29-789f320fe840",
        "status": "working",
        "createdAt": "2025-11-25T10:30:00Z",
        "lastUpdatedAt": "2025-11-25T10:40:00Z",
        "ttlMs": 60000,
        "pollIntervalMs": 5000,
    },
}


def test_task_from_json() -> None:
    raw = json.dumps(CREATED).encode()
    assert mcp_tasks.task_from_json(raw) == ("786512e2-9e0d-44bd-8f29-789f320fe840", 60000)
    assert mcp_tasks.task_from_json(raw, request_id=1) is not None
    assert mcp_tasks.task_from_json(raw, request_id=2) is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(resultType="complete"),
        lambda r: r.update(resultType="TASK"),
        lambda r: r.pop("resultType"),
        lambda r: r.update(taskId=123),
        lambda r: r.update(taskId=""),
        lambda r: r.update(taskId="x" * 5000),
        lambda r: r.pop("taskId"),
    ],
)
def test_not_a_created_task(mutate: Any) -> None:
    message = json.loads(json.dumps(CREATED))
    mutate(message["result"])
    assert mcp_tasks.created_task(message) is None


@pytest.mark.parametrize(
    ("ttl", "kept"),
    [
        (None, None),
        (0, None),
        (-5, None),
        (True, None),
        (1.5, None),
        ("60000", None),
        (1, 1),
        (10**12, 10**12),
    ],
)
def test_ttl_ms(ttl: Any, kept: Any) -> None:
    message = json.loads(json.dumps(CREATED))
    message["result"]["ttlMs"] = ttl
    found = mcp_tasks.created_task(message)
    assert found is not None and found.ttl_ms == kept


def test_requests_errors_and_batches_create_nothing() -> None:
    assert (
        mcp_tasks.created_task(
            {"jsonrpc": "2.0", "id": 1, "method": "x", "result": CREATED["result"]}
        )
        is None
    )
    assert mcp_tasks.created_task({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}}) is None
    assert mcp_tasks.task_from_json(b"[" + json.dumps(CREATED).encode() + b"]") is None
    assert mcp_tasks.task_from_json(b"{") is None
    assert mcp_tasks.task_from_json(b" " * (mcp_tasks.MAX_EVENT + 1)) is None


def sse(*events: bytes, eol: bytes = b"\n") -> bytes:
    return b"".join(events).replace(b"\n", eol)


def event(message: Any, name: bytes | None = None) -> bytes:
    head = b"event: " + name + b"\n" if name else b""
    return head + b"id: 3\ndata: " + json.dumps(message).encode() + b"\n\n"


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_task_from_the_final_sse_event_in_any_pieces(eol: bytes, step: int) -> None:
    stream = sse(
        b": keep-alive\n\n", event(PROGRESS), b"retry: 10\n\n", event(CREATED, b"message"), eol=eol
    )
    reader = mcp_tasks.SseLastEvent()
    for i in range(0, len(stream), step):
        reader.feed(stream[i : i + step])
    assert mcp_tasks.task_from_sse(reader.last, request_id=1) == (
        CREATED["result"]["taskId"],
        60000,
    )


def test_multiline_data_is_joined() -> None:
    text = json.dumps(CREATED, indent=1).encode()
    stream = b"".join(b"data: " + line + b"\n" for line in text.split(b"\n")) + b"\n"
    reader = mcp_tasks.SseLastEvent()
    reader.feed(stream)
    assert mcp_tasks.task_from_sse(reader.last) is not None


def test_an_unfinished_or_later_event_is_not_the_answer() -> None:
    reader = mcp_tasks.SseLastEvent()
    reader.feed(event(CREATED)[:-1])  # no blank line yet: not an event
    assert reader.last is None
    reader.feed(b"\n")
    assert reader.last is not None
    reader.feed(event(PROGRESS))  # a later event: the final one is what counts
    assert mcp_tasks.task_from_sse(reader.last) is None


def test_an_oversized_event_is_dropped_with_bounded_memory() -> None:
    reader = mcp_tasks.SseLastEvent()
    reader.feed(b"data: " + b"x" * 10_000)
    for _ in range(20):
        reader.feed(b"y" * 10_000)  # one endless line
    reader.feed(b"\n\n")
    assert reader.last is None
    for _ in range(20):
        reader.feed(b"data: " + b"z" * 10_000 + b"\n")  # many lines
    reader.feed(b"\n")
    assert reader.last is None
    reader.feed(event(CREATED))  # the reader recovers for the next event
    assert mcp_tasks.task_from_sse(reader.last) is not None


def test_fields_that_only_start_like_data_are_not_data() -> None:
    reader = mcp_tasks.SseLastEvent()
    reader.feed(b"datax: " + json.dumps(CREATED).encode() + b"\n\n")
    assert reader.last is None
    reader.feed(b"data:" + json.dumps(CREATED).encode() + b"\n\n")  # no space after the colon
    assert mcp_tasks.task_from_sse(reader.last) is not None
