"""Tests for the signed session-id / cookie token codec (proxy/sessions/tokens.py)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcplb.proxy.sessions.tokens import (
    MAX_TOKEN,
    MIN_KEY_LENGTH,
    PURPOSE_COOKIE,
    PURPOSE_SESSION,
    VERIFIED_CACHE,
    TokenCodec,
)

KEY_OLD = "old-" + "o" * 40
KEY_NEW = "new-" + "n" * 40
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
# RFC 3986 unreserved characters: used in a query value without percent-encoding.
URL_SAFE = set(string.ascii_letters + string.digits + "-._~")
# RFC 6265 cookie-octet: visible ASCII except DQUOTE, comma, semicolon and backslash.
COOKIE_SAFE = set(VISIBLE) - set('",;\\')
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_."
SID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec([KEY_OLD], PURPOSE_SESSION)


@pytest.mark.parametrize("backend", ["mcp-a", "B_2.x", "a", "a.b_c-d.9", "x" * 255, VISIBLE])
@pytest.mark.parametrize("value", ["", SID, VISIBLE, "/messages/?session_id=1&a=b", "v" * 400])
def test_round_trip(codec: TokenCodec, backend: str, value: str) -> None:
    token = codec.seal(backend, value)
    assert codec.open(token) == (backend, value)
    assert len(token) <= MAX_TOKEN


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=VISIBLE, min_size=1, max_size=64),
    st.text(alphabet=VISIBLE, max_size=300),
)
def test_round_trip_any_visible_ascii(backend: str, value: str) -> None:
    codec = TokenCodec([KEY_OLD], PURPOSE_SESSION)
    token = codec.seal(backend, value)
    assert codec.open(token) == (backend, value)
    assert set(token) <= URL_SAFE & COOKIE_SAFE


def test_alphabet_is_url_and_cookie_safe(codec: TokenCodec) -> None:
    for value in ("", SID, VISIBLE, "~" * 100, "\x7e\x21" * 50):
        token = codec.seal("mcp-a", value)
        assert token.startswith("v1.")
        assert token.count(".") == 2
        assert set(token) <= set(TOKEN_ALPHABET)
        assert set(token) <= URL_SAFE & COOKIE_SAFE
        assert all(0x21 <= ord(ch) <= 0x7E for ch in token)


def test_seal_is_deterministic_and_key_dependent(codec: TokenCodec) -> None:
    assert codec.seal("a", SID) == codec.seal("a", SID)
    assert TokenCodec([KEY_NEW], PURPOSE_SESSION).seal("a", SID) != codec.seal("a", SID)


def test_fields_are_unambiguous(codec: TokenCodec) -> None:
    # Moving a character from the name to the value changes the token and what it opens to.
    one, two = codec.seal("ab", "c"), codec.seal("a", "bc")
    assert one != two
    assert (codec.open(one), codec.open(two)) == (("ab", "c"), ("a", "bc"))


def test_longest_value_that_seals_still_opens(codec: TokenCodec) -> None:
    longest: tuple[int, str] | None = None
    for size in range(500, 1000):
        try:
            longest = size, codec.seal("mcp-a", "v" * size)
        except ValueError:
            break
    assert longest is not None
    size, token = longest
    assert size > 600  # plenty for session ids (the SDK's are 32 hex digits)
    assert len(token) <= MAX_TOKEN
    assert codec.open(token) == ("mcp-a", "v" * size)
    with pytest.raises(ValueError):
        codec.seal("mcp-a", "v" * (size + 1))


@pytest.mark.parametrize(
    ("backend", "value"),
    [
        ("", SID),
        ("a b", SID),
        ("caf\u00e9", SID),
        ("x" * 256, SID),
        ("a\n", SID),
        ("a", "with space"),
        ("a", "tab\there"),
        ("a", "line\r\nbreak"),
        ("a", "\u00e9"),
        ("a", "\x7f"),
        ("a", "v" * 1000),
        ("a", "v" * 70000),
    ],
)
def test_seal_refuses_what_it_cannot_carry(codec: TokenCodec, backend: str, value: str) -> None:
    with pytest.raises(ValueError):
        codec.seal(backend, value)


def test_rotation(codec: TokenCodec) -> None:
    rotated = TokenCodec([KEY_NEW, KEY_OLD], PURPOSE_SESSION)
    old_token = codec.seal("a", SID)
    new_token = rotated.seal("a", SID)
    assert rotated.open(old_token) == ("a", SID)  # old tokens keep working
    assert rotated.open(new_token) == ("a", SID)
    assert codec.open(new_token) is None  # the new key signs; old-only replicas refuse
    assert TokenCodec([KEY_NEW], PURPOSE_SESSION).open(old_token) is None  # old key dropped


def test_foreign_key(codec: TokenCodec) -> None:
    assert TokenCodec([KEY_NEW], PURPOSE_SESSION).open(codec.seal("a", SID)) is None


def test_other_purpose() -> None:
    session = TokenCodec([KEY_OLD], PURPOSE_SESSION)
    cookie = TokenCodec([KEY_OLD], PURPOSE_COOKIE)
    assert cookie.open(session.seal("a", SID)) is None
    assert session.open(cookie.seal("a", "")) is None
    assert cookie.open(cookie.seal("a", "")) == ("a", "")


def test_str_and_bytes_keys_agree() -> None:
    token = TokenCodec([KEY_OLD], PURPOSE_SESSION).seal("a", SID)
    assert TokenCodec([KEY_OLD.encode()], PURPOSE_SESSION).open(token) == ("a", SID)


def test_every_single_character_change_is_refused(codec: TokenCodec) -> None:
    token = codec.seal("mcp-a", SID)
    for index, original in enumerate(token):
        for replacement in TOKEN_ALPHABET:
            if replacement != original:
                tampered = token[:index] + replacement + token[index + 1 :]
                assert codec.open(tampered) is None, (index, replacement)


def test_every_truncation_and_extension_is_refused(codec: TokenCodec) -> None:
    token = codec.seal("mcp-a", SID)
    for length in range(len(token)):
        assert codec.open(token[:length]) is None, length
        assert codec.open(token[length + 1 :]) is None, length
    for extra in ("A", "=", "==", ".", "\n", " "):
        assert codec.open(token + extra) is None
        assert codec.open(extra + token) is None


def test_other_encodings_of_the_same_bytes_are_refused(codec: TokenCodec) -> None:
    token = codec.seal("mcp-a", SID)
    _, payload, tag = token.split(".")
    padded = f"v1.{payload}{'=' * (-len(payload) % 4)}.{tag}="
    assert codec.open(padded) is None
    standard = token.replace("-", "+").replace("_", "/")
    if standard != token:
        assert codec.open(standard) is None
    assert codec.open(token.upper()) is None
    assert codec.open("V1" + token[2:]) is None
    assert codec.open("v2" + token[2:]) is None


def test_oversized_tokens_are_refused(codec: TokenCodec) -> None:
    assert codec.open("v1." + "A" * 5000) is None
    token = codec.seal("mcp-a", "v" * 600)
    assert codec.open(token + "A" * (MAX_TOKEN + 1 - len(token))) is None


@pytest.mark.parametrize(
    "garbage",
    ["", "a-1", SID, "v1.", "v1..", "v1.AAAA.", "v1..AAAA", "v1.A.A", ".", "..", "\x00", "é"],
)
def test_garbage_is_refused(codec: TokenCodec, garbage: str) -> None:
    assert codec.open(garbage) is None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.text(alphabet=TOKEN_ALPHABET, max_size=200),
        st.from_regex(r"v1\.[A-Za-z0-9_-]{1,80}\.[A-Za-z0-9_-]{43}", fullmatch=True),
        st.text(alphabet=TOKEN_ALPHABET, max_size=120).map(lambda s: "v1." + s),
    )
)
def test_random_strings_never_open_and_never_raise(text: str) -> None:
    assert TokenCodec([KEY_OLD], PURPOSE_SESSION).open(text) is None


def test_open_tolerates_non_strings(codec: TokenCodec) -> None:
    assert codec.open(None) is None  # type: ignore[arg-type]
    assert codec.open(b"v1.AAAA.AAAA") is None  # type: ignore[arg-type]


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        TokenCodec([], PURPOSE_SESSION)
    with pytest.raises(TypeError):
        TokenCodec(KEY_OLD, PURPOSE_SESSION)
    with pytest.raises(ValueError):
        TokenCodec(["x" * (MIN_KEY_LENGTH - 1)], PURPOSE_SESSION)
    with pytest.raises(ValueError):
        TokenCodec([KEY_OLD, b"short"], PURPOSE_SESSION)
    with pytest.raises(ValueError):
        TokenCodec([KEY_OLD], "")
    TokenCodec(["x" * MIN_KEY_LENGTH, b"y" * MIN_KEY_LENGTH], PURPOSE_COOKIE)


def test_verified_tokens_are_remembered_but_bounded() -> None:
    codec = TokenCodec(["k" * 40], "session")
    tokens = [codec.seal("a", f"s{i}") for i in range(VERIFIED_CACHE + 10)]
    assert [codec.open(t) for t in tokens] == [("a", f"s{i}") for i in range(len(tokens))]
    assert len(codec._verified) == VERIFIED_CACHE
    assert codec.open(tokens[0]) == ("a", "s0")  # evicted, verified again
    assert codec.open(tokens[0][:-1] + "x") is None
