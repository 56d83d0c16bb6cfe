"""Sessions and tasks bound to their principal (edge auth on), without sockets: the signed
id's principal digest (sealed inside the MAC'd payload, never the principal itself, cannot
be stripped, changed or spliced), the stores' principal-scoped keys, and each key kind's
lookups (memory store, signed ids, tasks) for the principal that made a binding, another
one, and none. With auth off the kinds hold no scope and store the ids as they are. The
same on real processes (tokens from a real provider, Redis, 1 and 2 workers) is in
tests/test_principal_binding_processes.py."""

from __future__ import annotations

import base64
import binascii
import json

import pytest

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.relay.affinity import KeyFound, McpTasks, SignedSessions, StoredSessions
from mcplb.proxy.relay.framing import LENGTH, ResponseHead
from mcplb.proxy.relay.http11 import SESSION_NOT_FOUND, wire_fields
from mcplb.proxy.relay.request import Request
from mcplb.proxy.routing.mcp_era import Verdict
from mcplb.proxy.server.runtime import Runtime
from mcplb.proxy.sessions import principal as principals
from mcplb.proxy.sessions.principal import PrincipalScope
from mcplb.proxy.sessions.tokens import PURPOSE_SESSION, TokenCodec

KEY_OLD = "principal-binding-old-key-" + "o" * 16
KEY_NEW = "principal-binding-new-key-" + "n" * 16
ALICE = "https://idp.example.com alice"
BOB = "https://idp.example.com bob"
ALICE_ELSEWHERE = "https://other-idp.example.com alice"  # same sub, another issuer

AUTH = """
auth:
  resource: https://mcp.example.com/mcp
  jwt: {issuer: "https://idp.example.com", jwks_url: "https://idp.example.com/jwks"}
"""


def config(sticky: str, auth: bool = True) -> str:
    return (
        "listen: 127.0.0.1:0\nadmin: {enabled: false}\nlog: {access: false}\n"
        "backends:\n  - {name: a, url: 'http://10.0.0.1:8000/'}\n"
        "  - {name: b, url: 'http://10.0.0.2:8000/'}\n" + sticky + (AUTH if auth else "")
    )


def runtime(sticky: str = "", auth: bool = True) -> Runtime:
    return Runtime(parse_config(config(sticky, auth)), probing=False)


SIGNED = f"sticky: {{store: signed, keys: ['{KEY_OLD}']}}\n"


def request(principal: str | None, session_id: str | None = None) -> Request:
    r = Request()
    r.method = b"POST"
    r.target = b"/mcp"
    r.principal = principal
    r.session_id = session_id
    return r


def minted(session_id: str = "raw-1") -> ResponseHead:
    """A backend's 200 head minting ``session_id``."""
    return ResponseHead(
        LENGTH,
        wire_fields([(b"mcp-session-id", session_id.encode())]),
        True,
        False,
        session_id.encode(),
        b"application/json",
    )


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the signed id's digest ---------------------------------------------------------------


def test_a_signed_id_carries_a_digest_of_its_principal_never_the_principal() -> None:
    codec = TokenCodec([KEY_OLD], PURPOSE_SESSION)
    token = codec.seal("a", "raw-1", ALICE)
    payload = b64decode(token.split(".")[1])
    assert b"alice" not in payload and b"idp.example.com" not in payload
    assert len(payload) == len(b64decode(codec.seal("a", "raw-1").split(".")[1])) + 16
    assert codec.open(token) == ("a", "raw-1")
    assert codec.belongs(token, ALICE) is None
    assert codec.belongs(token, BOB) == "principal"
    assert codec.belongs(token, ALICE_ELSEWHERE) == "principal"  # iss is part of it
    assert codec.belongs(token, None) == "anonymous"
    unbound = codec.seal("a", "raw-1")  # as sealed with auth off
    assert codec.open(unbound) == ("a", "raw-1")
    assert codec.belongs(unbound, ALICE) == "unbound"


def test_the_digest_cannot_be_stripped_changed_or_spliced() -> None:
    codec = TokenCodec([KEY_OLD], PURPOSE_SESSION)
    alice = codec.seal("a", "raw-1", ALICE)
    bob = codec.seal("a", "raw-1", BOB)
    version, payload, tag = alice.split(".")
    raw = b64decode(payload)
    stripped = f"{version}.{b64encode(raw[:-16])}.{tag}"
    flipped = f"{version}.{b64encode(raw[:-1] + bytes([raw[-1] ^ 1]))}.{tag}"
    spliced = f"{version}.{bob.split('.')[1]}.{tag}"  # bob's payload under alice's tag
    other_length = f"{version}.{b64encode(raw + b'x')}.{tag}"
    for forged in (stripped, flipped, spliced, other_length):
        assert TokenCodec([KEY_OLD], PURPOSE_SESSION).open(forged) is None, forged
    # Only the key re-signs: a codec with another key opens none of them.
    assert TokenCodec([KEY_NEW], PURPOSE_SESSION).open(alice) is None


def test_a_digest_sealed_under_the_old_key_still_belongs_after_rotation() -> None:
    old = TokenCodec([KEY_OLD], PURPOSE_SESSION).seal("a", "raw-1", ALICE)
    rotated = TokenCodec([KEY_NEW, KEY_OLD], PURPOSE_SESSION)
    assert rotated.open(old) == ("a", "raw-1")
    assert rotated.belongs(old, ALICE) is None
    assert rotated.belongs(old, BOB) == "principal"
    new = rotated.seal("a", "raw-1", ALICE)
    assert new != old and rotated.belongs(new, ALICE) is None


def test_the_digest_of_a_token_leaving_the_verified_cache_leaves_with_it() -> None:
    codec = TokenCodec([KEY_OLD], PURPOSE_SESSION)
    tokens = [codec.seal("a", f"raw-{i}", ALICE) for i in range(5000)]
    for token in tokens:
        assert codec.open(token) is not None
        assert codec.belongs(token, ALICE) is None  # confirmed: then a lookup, a compare
        assert codec.belongs(token, BOB) == "principal"  # not Alice's confirmation
    assert len(codec._confirmed) <= len(codec._digests) <= len(codec._verified) <= 4096
    assert codec.belongs(tokens[-1], ALICE) is None


# -- the stores' scope ---------------------------------------------------------------------


def test_scope_keys_differ_by_principal_and_hold_no_principal() -> None:
    scope = PrincipalScope(b"k" * 32)
    keys = {p: scope.key(p, "sid") for p in (ALICE, BOB, ALICE_ELSEWHERE)}
    assert len(set(keys.values())) == 3
    for key in keys.values():
        assert key is not None and key.endswith(":sid") and "alice" not in key
        assert len(key) == 22 + 1 + 3  # 16 bytes of digest in base64url, ":", the id
    assert scope.key(None, "sid") is None
    assert PrincipalScope(b"j" * 32).key(ALICE, "sid") != keys[ALICE]  # keyed
    assert PrincipalScope(b"k" * 32).key(ALICE, "sid") == keys[ALICE]  # deterministic


def test_the_scope_cache_is_bounded() -> None:
    scope = PrincipalScope(b"k" * 32)
    for i in range(principals.CACHED_PRINCIPALS + 10):
        scope.prefix(f"iss sub-{i}")
    assert len(scope._prefixes) == principals.CACHED_PRINCIPALS


def test_the_shared_key_follows_the_first_sticky_key() -> None:
    assert principals.shared_key([KEY_OLD]) == principals.shared_key([KEY_OLD, KEY_NEW])
    assert principals.shared_key([KEY_NEW]) != principals.shared_key([KEY_OLD])
    assert principals.shared_key([]) != principals.shared_key([KEY_OLD])


# -- the key kinds -------------------------------------------------------------------------


async def resolved(found: KeyFound | None) -> str | None:
    """The backend a key names (after the store's lookup); None: unknown."""
    assert found is not None
    if found.pending is not None:
        found.name = await found.pending
        found.pending = None
    return found.name


async def test_memory_store_a_session_belongs_to_its_principal() -> None:
    rt = runtime()
    stored = rt.affinity.kinds[0]
    assert isinstance(stored, StoredSessions)
    _, job, _ = stored.on_head(request(ALICE), None, 200, minted(), "a", None)
    assert job is not None
    await job
    assert await resolved(stored.route_key(request(ALICE, "raw-1"))) == "a"
    # Bob, and Alice of another issuer, look up another key: unknown, strict, 404.
    for other in (BOB, ALICE_ELSEWHERE):
        found = stored.route_key(request(other, "raw-1"))
        assert found is not None and found.strict and not found.guessed
        assert await resolved(found) is None
        status, raw = stored.not_found(request(other, "raw-1"), close=False)
        assert status == 404 and raw.endswith(SESSION_NOT_FOUND)
    # The same as an id nobody bound: the same path, the same answer.
    never = stored.route_key(request(BOB, "never-bound"))
    assert never is not None and await resolved(never) is None
    assert await rt.sessions.get("raw-1") is None  # not stored under the raw id
    # Bob's DELETE of Alice's id (were it to reach a backend) forgets nothing of Alice's.
    delete = request(BOB, "raw-1")
    delete.method = b"DELETE"
    _, job, _ = stored.on_head(delete, None, 200, minted(), "a", None)
    assert job is not None
    await job
    assert await resolved(stored.route_key(request(ALICE, "raw-1"))) == "a"


async def test_a_request_without_principal_uses_no_session_binding() -> None:
    rt = runtime()
    stored = rt.affinity.kinds[0]
    assert isinstance(stored, StoredSessions)
    _, job, _ = stored.on_head(request(ALICE), None, 200, minted(), "a", None)
    assert job is not None
    await job
    anonymous = request(None, "raw-1")
    assert stored.route_key(anonymous) is None and anonymous.session_id is None
    assert rt.stats.binding_refused == {"session anonymous": 1}
    # and binds nothing
    assert stored.on_head(request(None), None, 200, minted("raw-2"), "a", None)[1] is None


async def test_auth_off_stores_ids_as_they_are() -> None:
    rt = runtime(auth=False)
    stored = rt.affinity.kinds[0]
    assert isinstance(stored, StoredSessions) and stored.scope is None
    _, job, _ = stored.on_head(request(None), None, 200, minted(), "a", None)
    assert job is not None
    await job
    assert await rt.sessions.get("raw-1") == "a"
    assert await resolved(stored.route_key(request(None, "raw-1"))) == "a"


async def test_signed_ids_open_for_their_principal_only() -> None:
    rt = runtime(SIGNED)
    signed = rt.affinity.kinds[0]
    assert isinstance(signed, SignedSessions) and signed.bound
    wire, _, _ = signed.on_head(request(ALICE), None, 200, minted(), "a", None)
    assert wire is not None
    token = wire[2].decode()
    alice = request(ALICE, token)
    found = signed.route_key(alice)
    assert found is not None and found.name == "a" and alice.upstream_session_id == "raw-1"
    bob = request(BOB, token)
    found = signed.route_key(bob)
    assert found is not None and found.name is None and found.strict  # 404, as a forged id
    assert bob.upstream_session_id is None
    unbound = TokenCodec([KEY_OLD], PURPOSE_SESSION).seal("a", "raw-1")  # auth was off
    found = signed.route_key(request(ALICE, unbound))
    assert found is not None and found.name is None
    anonymous = request(None, token)
    assert signed.route_key(anonymous) is None and anonymous.upstream_session_id is None
    assert rt.stats.binding_refused == {
        "session principal": 1,
        "session unbound": 1,
        "session anonymous": 1,
    }


async def test_legacy_sse_endpoint_sessions_are_bound_to_the_principal() -> None:
    rt = runtime()
    stored = rt.affinity.kinds[0]
    assert isinstance(stored, StoredSessions)
    get = request(ALICE)
    get.method = b"GET"
    head = ResponseHead(LENGTH, wire_fields([]), True, False, None, b"text/event-stream")
    _, _, learner = stored.on_head(get, None, 200, head, "b", None)
    assert learner is not None
    _, job = learner.feed(b"event: endpoint\ndata: /messages/?session_id=abcdef\n\n")
    assert job is not None
    await job
    post = request(ALICE)
    post.target = b"/messages/?session_id=abcdef"
    assert await resolved(stored.route_key(post)) == "b"
    theirs = request(BOB)
    theirs.target = b"/messages/?session_id=abcdef"
    assert await resolved(stored.route_key(theirs)) is None
    # A stream of a request without principal learns nothing.
    anonymous = request(None)
    anonymous.method = b"GET"
    assert stored.on_head(anonymous, None, 200, head, "b", None)[2] is None
    # Signed: the endpoint's id is sealed for the principal.
    signed_rt = runtime(SIGNED)
    signed = signed_rt.affinity.kinds[0]
    assert isinstance(signed, SignedSessions)
    _, _, learner = signed.on_head(get, None, 200, head, "b", None)
    assert learner is not None
    data, _ = learner.feed(b"event: endpoint\ndata: /messages/?session_id=abcdef\n\n")
    token = data.split(b"session_id=")[1].split(b"\n")[0].decode()
    assert signed.codec.belongs(token, ALICE) is None
    assert signed.codec.belongs(token, BOB) == "principal"


def task_request(principal: str | None, method: str, task_id: str = "", rpc_id: int = 7) -> Request:
    r = request(principal)
    verdict = Verdict()
    verdict.modern = True
    verdict.method = method
    verdict.message_id = rpc_id
    if task_id:
        verdict.task_ids = (task_id,)
    r.verdict = verdict
    return r


@pytest.mark.parametrize("sticky", ["", SIGNED])  # tasks live in memory in both
async def test_a_task_belongs_to_its_principal(sticky: str) -> None:
    rt = runtime(sticky)
    tasks = rt.affinity.kinds[1]
    assert isinstance(tasks, McpTasks) and tasks.scope is not None
    head = ResponseHead(LENGTH, wire_fields([]), True, False, None, b"application/json")
    _, _, learner = tasks.on_head(task_request(ALICE, "tools/call"), None, 200, head, "b", None)
    assert learner is not None
    answer = {"jsonrpc": "2.0", "id": 7, "result": {"resultType": "task", "taskId": "t-1"}}
    assert learner.feed(json.dumps(answer).encode()) == (b"", None)
    _, job = learner.flush()
    assert job is not None
    await job
    found = tasks.route_key(task_request(ALICE, "tasks/get", "t-1"))
    assert await resolved(found) == "b"
    assert found is not None and found.strict and not found.guessed
    answers = []
    for other, task_id in ((BOB, "t-1"), (ALICE_ELSEWHERE, "t-1"), (BOB, "t-never")):
        req = task_request(other, "tasks/get", task_id, rpc_id=9)
        found = tasks.route_key(req)
        assert found is not None and found.strict and not found.guessed
        assert await resolved(found) is None
        answers.append(tasks.not_found(req, close=False))
    assert answers[0] == answers[1] == answers[2]  # another's task, an unknown one: the same
    status, raw = answers[0]
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert status == 400 and raw.startswith(b"HTTP/1.1 400 ")
    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {"code": -32602, "message": "Failed to retrieve task: Task not found"},
    }
    assert tasks.route_key(task_request(None, "tasks/get", "t-1")) is None  # no principal


async def test_auth_off_tasks_stay_guessed_and_unscoped() -> None:
    rt = runtime(auth=False)
    tasks = rt.affinity.kinds[1]
    assert isinstance(tasks, McpTasks) and tasks.scope is None
    await tasks.store.bind("t-1", "b")
    found = tasks.route_key(task_request(None, "tasks/get", "t-1"))
    assert found is not None and found.guessed and await resolved(found) == "b"


def test_no_principal_text_in_a_scoped_key_even_for_odd_subjects() -> None:
    scope = PrincipalScope(principals.PROCESS_KEY)
    for principal in ("https://idp sub with spaces", "https://idp \u00e9\u00e8", "x " + "y" * 1024):
        key = scope.key(principal, "id")
        assert key is not None and len(key) == 25
        binascii.a2b_base64(key[:22].replace("-", "+").replace("_", "/") + "==")
