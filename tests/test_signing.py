"""Tests for rtserve.app.signing: signed cookies (expiry, tampering, rotation) and XSRF."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.app.signing import (
    DEFAULT_MAX_AGE,
    MAX_CLOCK_SKEW,
    CookieSigner,
    new_xsrf_token,
    xsrf_tokens_match,
)

FUZZ = settings(max_examples=200, deadline=None)
OLD = "old-secret-0123456789abcdef"
NEW = b"new-secret-\x00\xff-0123456789"
NOW = 1_700_000_000
# RFC 6265 cookie-octet: visible ASCII except DQUOTE, comma, semicolon and backslash.
COOKIE_OCTETS = {chr(c) for c in range(0x21, 0x7F)} - set('",;\\')
NAMES = st.text(max_size=20)
VALUES = st.one_of(st.binary(max_size=100), st.text(max_size=50))


def encoded(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secrets",
    [[], [""], ["x" * 15], [b"y" * 15], [OLD, "short"], ["é" * 7]],
)
def test_signer_rejects_missing_or_short_secrets(secrets: list[str | bytes]) -> None:
    with pytest.raises(ValueError):
        CookieSigner(secrets)


def test_signer_accepts_sixteen_byte_secrets() -> None:
    CookieSigner(["x" * 16])
    CookieSigner([b"\x00" * 16])
    CookieSigner(["é" * 8])  # 16 bytes of UTF-8


@pytest.mark.parametrize("secrets", [OLD, NEW, [OLD, 1234567890123456789]])
def test_signer_rejects_non_sequences_of_secrets(secrets: object) -> None:
    with pytest.raises(TypeError):
        CookieSigner(secrets)  # type: ignore[arg-type]


def test_signer_repr_hides_secrets() -> None:
    assert OLD not in repr(CookieSigner([OLD]))


# --- sign / unsign -------------------------------------------------------------------------


def test_sign_format() -> None:
    signed = CookieSigner([OLD]).sign("session", "hello", timestamp=NOW)
    version, stamp, value, mac = signed.split(".")
    assert (version, stamp, value) == ("v1", str(NOW), "aGVsbG8")
    assert len(mac) == 43
    assert set(signed) <= COOKIE_OCTETS


def test_sign_is_deterministic_for_a_timestamp() -> None:
    signer = CookieSigner([OLD])
    assert signer.sign("a", b"v", timestamp=5) == signer.sign("a", b"v", timestamp=5)
    assert signer.sign("a", b"v", timestamp=5) != signer.sign("a", b"v", timestamp=6)


def test_sign_defaults_to_now() -> None:
    signer = CookieSigner([OLD])
    assert signer.unsign("a", signer.sign("a", "v")) == b"v"


def test_sign_rejects_negative_timestamp() -> None:
    with pytest.raises(ValueError):
        CookieSigner([OLD]).sign("a", "v", timestamp=-1)


def test_value_is_bound_to_the_cookie_name() -> None:
    signer = CookieSigner([OLD])
    signed = signer.sign("user", "alice", timestamp=NOW)
    assert signer.unsign("user", signed, now=NOW) == b"alice"
    assert signer.unsign("admin", signed, now=NOW) is None
    assert signer.unsign("user.", signed, now=NOW) is None


@pytest.mark.parametrize(
    ("age", "max_age", "valid"),
    [
        (0, DEFAULT_MAX_AGE, True),
        (DEFAULT_MAX_AGE, DEFAULT_MAX_AGE, True),
        (DEFAULT_MAX_AGE + 1, DEFAULT_MAX_AGE, False),
        (10, 10, True),
        (10.5, 10, False),
        (10**9, None, True),
        (1, 0, False),
        (-MAX_CLOCK_SKEW, DEFAULT_MAX_AGE, True),
        (-MAX_CLOCK_SKEW - 1, DEFAULT_MAX_AGE, False),
        (-MAX_CLOCK_SKEW - 1, None, False),
    ],
)
def test_unsign_age_and_clock_skew(age: float, max_age: float | None, valid: bool) -> None:
    signer = CookieSigner([OLD])
    signed = signer.sign("a", "v", timestamp=NOW)
    result = signer.unsign("a", signed, max_age=max_age, now=NOW + age)
    assert result == (b"v" if valid else None)


def test_key_rotation() -> None:
    old = CookieSigner([OLD])
    rotated = CookieSigner([NEW, OLD])
    new_only = CookieSigner([NEW])
    from_old = old.sign("s", "v", timestamp=NOW)
    from_rotated = rotated.sign("s", "v", timestamp=NOW)
    assert rotated.unsign("s", from_old, now=NOW) == b"v"
    assert rotated.unsign("s", from_rotated, now=NOW) == b"v"
    assert new_only.unsign("s", from_rotated, now=NOW) == b"v"
    assert from_rotated == new_only.sign("s", "v", timestamp=NOW)
    assert old.unsign("s", from_rotated, now=NOW) is None
    assert new_only.unsign("s", from_old, now=NOW) is None


def test_str_and_bytes_secrets_are_equivalent() -> None:
    as_str = CookieSigner([OLD]).sign("s", "v", timestamp=NOW)
    assert CookieSigner([OLD.encode()]).unsign("s", as_str, now=NOW) == b"v"


@pytest.mark.parametrize(
    "signed",
    [
        None,
        "",
        "garbage",
        "v1.1700000000.dg",
        "v1.1700000000.dg.",
        "v1.1700000000.dg.mac.extra",
        "v2.1700000000.dg." + "A" * 43,
        "v1..dg." + "A" * 43,
        "v1.-5.dg." + "A" * 43,
        "v1.+5.dg." + "A" * 43,
        "v1.017.dg." + "A" * 43,
        "v1.1e9.dg." + "A" * 43,
        "v1." + "9" * 5000 + ".dg." + "A" * 43,
        "v1.1700000000.d=g." + "A" * 43,
        "v1.1700000000.d+g/." + "A" * 43,
        "v1.1700000000.dg." + "A" * 42,
        "v1.1700000000.dg." + "A" * 44,
        "v1.1700000000.dg." + "é" * 43,
        "v1." + "\u0661" * 10 + ".dg." + "A" * 43,  # Arabic-Indic digits
    ],
)
def test_unsign_rejects_malformed(signed: str | None) -> None:
    assert CookieSigner([OLD]).unsign("a", signed, now=NOW) is None


def test_unsign_rejects_non_string() -> None:
    signer = CookieSigner([OLD])
    signed = signer.sign("a", "v", timestamp=NOW)
    assert signer.unsign("a", signed.encode(), now=NOW) is None  # type: ignore[arg-type]


@FUZZ
@given(name=NAMES, value=VALUES, timestamp=st.integers(0, 2**40))
def test_round_trip(name: str, value: str | bytes, timestamp: int) -> None:
    signer = CookieSigner([NEW, OLD])
    signed = signer.sign(name, value, timestamp=timestamp)
    assert set(signed) <= COOKIE_OCTETS
    assert signer.unsign(name, signed, max_age=None, now=timestamp) == encoded(value)


@FUZZ
@given(name=NAMES, value=VALUES, data=st.data())
def test_any_changed_character_invalidates(
    name: str, value: str | bytes, data: st.DataObject
) -> None:
    signer = CookieSigner([OLD])
    signed = signer.sign(name, value, timestamp=NOW)
    index = data.draw(st.integers(0, len(signed) - 1), label="index")
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != signed[index]))
    tampered = signed[:index] + replacement + signed[index + 1 :]
    assert signer.unsign(name, tampered, now=NOW) is None


@FUZZ
@given(name=NAMES, value=VALUES, data=st.data())
def test_truncated_or_extended_is_invalid(
    name: str, value: str | bytes, data: st.DataObject
) -> None:
    signer = CookieSigner([OLD])
    signed = signer.sign(name, value, timestamp=NOW)
    cut = data.draw(st.integers(0, len(signed) - 1), label="cut")
    assert signer.unsign(name, signed[:cut], now=NOW) is None
    suffix = data.draw(st.text(min_size=1, max_size=5), label="suffix")
    assert signer.unsign(name, signed + suffix, now=NOW) is None


@FUZZ
@given(st.text(max_size=120), NAMES, st.floats(allow_nan=False), st.none() | st.floats())
def test_unsign_never_raises(signed: str, name: str, now: float, max_age: float | None) -> None:
    assert CookieSigner([OLD]).unsign(name, signed, now=now, max_age=max_age) is None


# --- XSRF -------------------------------------------------------------------------------------


def test_new_xsrf_token_is_random_and_cookie_safe() -> None:
    tokens = {new_xsrf_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) >= 43
        assert set(token) <= COOKIE_OCTETS


@pytest.mark.parametrize(
    ("cookie", "submitted", "expected"),
    [
        ("abc", "abc", True),
        ("abc", "abd", False),
        ("abc", "abcd", False),
        ("abc", "ABC", False),
        ("é", "é", True),
        (None, "abc", False),
        ("abc", None, False),
        (None, None, False),
        ("", "", False),
        ("", "abc", False),
        ("abc", "", False),
    ],
)
def test_xsrf_tokens_match(cookie: str | None, submitted: str | None, expected: bool) -> None:
    assert xsrf_tokens_match(cookie, submitted) is expected


def test_xsrf_fresh_token_matches_itself_only() -> None:
    token = new_xsrf_token()
    assert xsrf_tokens_match(token, token)
    assert not xsrf_tokens_match(token, new_xsrf_token())


def test_xsrf_rejects_non_strings() -> None:
    assert not xsrf_tokens_match(b"abc", b"abc")  # type: ignore[arg-type]
