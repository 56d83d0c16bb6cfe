"""Which era an MCP request speaks, and whether its 2026-07-28 routing headers tell the truth.

Pure functions over a request's header fields and body bytes: no I/O, no clock. The relay
calls ``read_head`` while it parses the head, and ``validate`` once the body (up to its
sniff bound) is in; nothing the headers claim is used before ``validate`` has compared it
with the body.

The rules are the spec's (docs/specification/2026-07-28/basic/transports/streamable-http.mdx,
"Request Metadata", and SEP-2243; tasks: SEP-2663 "Streamable HTTP: Routing Headers"):

- A request is *modern* when its ``MCP-Protocol-Version`` names revision 2026-07-28 or a
  later one ("Modern: protocol versions that convey version, identity, and capabilities as
  per-request metadata (revision 2026-07-28 and later)", basic/versioning.mdx); a
  ``server/discover`` without the header is modern too (the method exists in no legacy
  revision). Everything else is legacy, and nothing is taken from its routing headers
  ("If the version is older or the header is absent, the intermediary SHOULD reject the
  request rather than trusting unvalidated header values": mcplb takes the body's values).
- ``Mcp-Method`` must equal the body's ``method``; ``Mcp-Name`` must equal ``params.name``
  (tools/call, prompts/get), ``params.uri`` (resources/read) or ``params.taskId``
  (tasks/get, tasks/update, tasks/cancel), after decoding the ``=?base64?...?=`` form.
  Values are compared exactly (they are case-sensitive); only the optional whitespace
  HTTP allows around a field value is trimmed (SEP-2243: "Extra whitespace in header ...
  MUST accept (trim whitespace per HTTP spec)").
- Refused (400, JSON-RPC -32020 HeaderMismatch, the request's id): a mismatch; a routing
  header sent twice (which copy would the server read?); a malformed base64 value or one
  that is not UTF-8; a literal value with characters outside visible ASCII, SP and HTAB;
  an ``Mcp-Name`` where the body has no such field (another method, params missing or not
  an object, the field not a string); routing headers on a body that is not one JSON-RPC
  request (a batch array, a response, not JSON); an ``MCP-Protocol-Version`` that differs
  from the body's ``_meta`` protocol version, or sent twice with different values.
- A body larger than MAX_CHECKED (64 KiB) is not held back for the check: nothing is
  taken from its headers (they are forwarded untouched, the backend checks them).
- A modern request *without* ``Mcp-Method``/``Mcp-Name`` is not refused here: the server
  refuses it (the spec makes that the server's duty), and mcplb routes and counts it by
  the body, which it has read anyway.
- ``Mcp-Param-*`` headers are not read: they are forwarded untouched (the spec: an
  intermediary that does not recognize one "MUST forward it and otherwise ignore it").
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any, Final

# The oldest modern revision; revisions are dates, so later ones compare greater as text.
FIRST_MODERN: Final = "2026-07-28"
_REVISION: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only

# Why a request was refused, as a metric label (a fixed set: never a client's value).
REASONS: Final = (
    "repeated_header",
    "not_a_request",
    "method_mismatch",
    "name_unexpected",
    "name_missing_in_body",
    "name_malformed",
    "name_mismatch",
    "version_mismatch",
)

HEADER_MISMATCH: Final = -32020  # the spec's HeaderMismatch (SEP-2243's -32001, renumbered)

VERSION_HEADER: Final = b"mcp-protocol-version"
METHOD_HEADER: Final = b"mcp-method"
NAME_HEADER: Final = b"mcp-name"

# Which body field Mcp-Name mirrors, by method (SEP-2243 and SEP-2663).
NAME_FIELD: Final[dict[str, str]] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}
TASK_METHODS: Final = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"

# A body with more openers than this is not parsed: the JSON parser recurses once per
# level, and a body of nothing but brackets would exhaust the stack.
MAX_NESTING: Final = 64
# Longest method or name mcplb reads, echoes in a refusal or keeps as a key: the spec sets
# no limit, a header of kilobytes is legal HTTP, and a refusal quotes none of it back.
MAX_VALUE: Final = 1024
_QUOTE: Final = 64  # how much of a value a refusal message quotes

_B64_OPEN: Final = b"=?base64?"
_B64_CLOSE: Final = b"?="
# Standard alphabet, padding required (SEP-2243: "Invalid Base64 padding ... MUST reject").
_B64: Final = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_FIELD_VALUE: Final = re.compile(rb"[\x20-\x7e\t]*")  # RFC 9110 field-value, no obs-text
_OWS: Final = b" \t"

# The largest body read before routing a modern request, to check its routing headers and
# find its task id: far above any tasks/* or discover message, and above most tool calls.
MAX_CHECKED: Final = 64 * 1024

# One decoder for every body, given text (json.loads of bytes first guesses the encoding).
_DECODER: Final = json.JSONDecoder()


def is_modern_version(version: str) -> bool:
    """Whether ``version`` names revision 2026-07-28 or a later dated revision."""
    return bool(_REVISION.fullmatch(version)) and version >= FIRST_MODERN


class Head:
    """What a request's head says about its era and its routing claims: filled field by
    field by ``see`` while the head is parsed (header names already lowercased)."""

    __slots__ = ("method", "modern", "name", "repeated", "version")

    def __init__(self) -> None:
        self.version: bytes | None = None  # MCP-Protocol-Version, trimmed
        # Whether the head alone names a modern revision: decided once, when the version
        # is seen (the relay asks twice a request; each answer was a decode and a regex).
        self.modern = False
        self.method: bytes | None = None  # Mcp-Method, as sent
        self.name: bytes | None = None  # Mcp-Name, as sent
        self.repeated: bytes | None = None  # a routing header that came twice

    def see(self, name: bytes, value: bytes) -> None:
        """Take one header field, if it is one of these."""
        if name == VERSION_HEADER:
            value = value.strip(_OWS)
            if self.version is not None and value != self.version:
                self.repeated = name
                if self.modern:
                    return  # two versions, one modern: modern (and refused as repeated)
            self.version = value
            self.modern = is_modern_version(value.decode("latin-1"))
        elif name == METHOD_HEADER:
            if self.method is not None:
                self.repeated = name
            self.method = value
        elif name == NAME_HEADER:
            if self.name is not None:
                self.repeated = name
            self.name = value

    @property
    def claims(self) -> bool:
        """Whether the head carries routing headers (Mcp-Method or Mcp-Name)."""
        return self.method is not None or self.name is not None


def read_head(headers: list[tuple[bytes, bytes]]) -> Head:
    """A ``Head`` from a whole list of (lowercased name, value) fields."""
    head = Head()
    for name, value in headers:
        head.see(name, value)
    return head


class Verdict:
    """What ``validate`` found: the era, the values the metrics and routing may use (all
    from the body, checked against the headers), or why the request is refused."""

    __slots__ = (
        "has_name",
        "message_id",
        "method",
        "modern",
        "name",
        "reason",
        "refusal",
        "task_ids",
    )

    def __init__(self) -> None:
        self.modern = False
        self.method = ""  # the body's method ("" if it has none)
        self.name = ""  # the body's params.name/uri/taskId for the methods that have one
        self.has_name = False  # that field is there, as a string (it may be "")
        self.task_ids: tuple[str, ...] = ()  # tasks/*: (taskId,); subscriptions/listen: its filter
        self.message_id: Any = None  # the request's JSON-RPC id (None: null)
        self.refusal: str | None = None  # set: answer 400 HeaderMismatch, send nothing on
        self.reason = ""  # the refusal's kind, one of REASONS: the metric's label

    @property
    def task_id(self) -> str:
        return self.task_ids[0] if self.task_ids else ""


def parse_message(body: bytes) -> Any:
    """The JSON value of ``body``, or None when it is not UTF-8 JSON or nests too deep."""
    if body.count(b"[") + body.count(b"{") > MAX_NESTING:
        return None  # nesting is at most the number of openers: bounded, no recursion
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or not JSON
        return None


def decode_name(raw: bytes) -> str | None:
    """An ``Mcp-Name`` (or ``Mcp-Param-*``) value as text: OWS trimmed, the base64 form
    decoded; None when malformed (bad base64, not UTF-8, characters a field value may not
    carry, longer than MAX_VALUE)."""
    value = raw.strip(_OWS)
    if len(value) > 4 * MAX_VALUE:
        return None
    if not value.startswith(_B64_OPEN):  # the plain form, the common one: no regex
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None  # obs-text: not a field value here
        if not text.isprintable() and not _FIELD_VALUE.fullmatch(value):
            return None  # a control character (HTAB, which isprintable refuses, passes)
        return text if len(text) <= MAX_VALUE else None
    if not _FIELD_VALUE.fullmatch(value):
        return None
    if (
        value.startswith(_B64_OPEN)
        and value.endswith(_B64_CLOSE)
        and len(value) >= len(_B64_OPEN) + len(_B64_CLOSE)
    ):
        encoded = value[len(_B64_OPEN) : -len(_B64_CLOSE)]
        if not _B64.fullmatch(encoded):
            return None
        try:
            text = binascii.a2b_base64(encoded, strict_mode=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    else:
        text = value.decode("ascii")
    return text if len(text) <= MAX_VALUE else None


def _quote(value: str) -> str:
    return value if len(value) <= _QUOTE else value[:_QUOTE] + "..."


def validate(head: Head, body: bytes | None) -> Verdict:
    """Judge a POST whose head is ``head`` and whose complete body is ``body``. None: the
    body was not read, being past the bound the proxy reads before routing (MAX_CHECKED);
    then nothing is taken from the headers (the verdict has no method, name or task: the
    request is routed by the strategy and counted by no name) and they go to the backend
    untouched, which must check them itself (the spec's "Servers that process the request
    body MUST reject requests where the values ... do not match")."""
    verdict = Verdict()
    message = parse_message(body) if body is not None else None
    verdict.modern = head.modern
    if isinstance(message, dict):
        verdict.message_id = _plain_id(message.get("id"))
        method = message.get("method")
        if isinstance(method, str) and len(method) <= MAX_VALUE:
            verdict.method = method
            params = message.get("params")
            field = NAME_FIELD.get(method)
            if field is not None and isinstance(params, dict):
                value = params.get(field)
                if isinstance(value, str) and len(value) <= MAX_VALUE:
                    verdict.name = value
                    verdict.has_name = True
            if method in TASK_METHODS and verdict.name:
                verdict.task_ids = (verdict.name,)
            elif method == "subscriptions/listen" and isinstance(params, dict):
                verdict.task_ids = _listen_task_ids(params)
            if head.version is None and method == "server/discover":
                verdict.modern = True
    if not verdict.modern:
        return verdict  # legacy: the headers are not read, the body's values stand
    found = _refusal(head, message, verdict, unread=body is None)
    if found is not None:
        verdict.reason, verdict.refusal = found
    return verdict


def _refusal(head: Head, message: Any, verdict: Verdict, *, unread: bool) -> tuple[str, str] | None:
    """Why a modern request's headers cannot be believed (reason, message), or None."""
    if head.repeated is not None:
        return "repeated_header", f"{_header_name(head.repeated)} header sent more than once"
    if unread:
        return None  # nothing is taken from the headers (see validate)
    if not isinstance(message, dict) or not verdict.method:
        if head.claims:
            return "not_a_request", "routing headers on a body that is not one JSON-RPC request"
        return None
    if head.method is not None:
        sent = head.method.strip(_OWS)
        if sent != verdict.method.encode("utf-8"):
            shown = _quote(sent.decode("latin-1"))
            return "method_mismatch", (
                f"Mcp-Method header value '{shown}' does not match body value "
                f"'{_quote(verdict.method)}'"
            )
    if head.name is not None:
        field = NAME_FIELD.get(verdict.method)
        if field is None:
            return (
                "name_unexpected",
                f"Mcp-Name header sent for method '{_quote(verdict.method)}', which has none",
            )
        if not verdict.has_name:
            return (
                "name_missing_in_body",
                f"Mcp-Name header sent but the body has no string params.{field}",
            )
        name = decode_name(head.name)
        if name is None:
            return "name_malformed", "Mcp-Name header value is malformed"
        if name != verdict.name:
            return "name_mismatch", (
                f"Mcp-Name header value '{_quote(name)}' does not match body value "
                f"'{_quote(verdict.name)}'"
            )
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    declared = meta.get(META_VERSION) if isinstance(meta, dict) else None
    if (
        head.version is not None
        and declared is not None
        and (not isinstance(declared, str) or declared.encode("utf-8") != head.version)
    ):
        shown = _quote(head.version.decode("latin-1"))
        return "version_mismatch", (
            f"MCP-Protocol-Version header value '{shown}' does not match body value "
            f"'{_quote(str(declared))}'"
        )
    return None


def _header_name(name: bytes) -> str:
    return {METHOD_HEADER: "Mcp-Method", NAME_HEADER: "Mcp-Name"}.get(name, "MCP-Protocol-Version")


def _plain_id(value: Any) -> Any:
    """A JSON-RPC id to echo: a string or an integer as sent (strings bounded), else null."""
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _listen_task_ids(params: dict[str, Any]) -> tuple[str, ...]:
    """The task ids a ``subscriptions/listen`` filters on (SEP-2663), first 16 strings."""
    notifications = params.get("notifications")
    ids = notifications.get("taskIds") if isinstance(notifications, dict) else None
    if not isinstance(ids, list):
        return ()
    return tuple(t for t in ids[:16] if isinstance(t, str) and 0 < len(t) <= MAX_VALUE)


def mismatch_body(verdict: Verdict) -> bytes:
    """The JSON-RPC error mcplb answers a refused request with (HTTP 400)."""
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": verdict.message_id,
            "error": {"code": HEADER_MISMATCH, "message": f"Header mismatch: {verdict.refusal}"},
        },
        ensure_ascii=True,
        separators=(",", ":"),
    ).encode("ascii")
