"""Signed cookie values and XSRF tokens.

Contract:
- `CookieSigner.sign` turns a cookie's (name, value) into the cookie-safe ASCII string
  `v1.<timestamp>.<base64url value>.<base64url HMAC-SHA256>`. The MAC covers the version,
  the timestamp, the encoded value and the cookie name, so a value signed for one cookie
  does not verify under another.
- The first secret signs and every secret verifies: rotate by putting the new secret first
  and dropping the old one once the longest cookie lifetime has passed.
- `CookieSigner.unsign` returns the value, or None for anything it cannot vouch for
  (malformed, tampered, unknown key, expired, or stamped more than `MAX_CLOCK_SKEW` seconds
  in the future). It never raises.
- XSRF follows the double-submit cookie pattern: a request is accepted when the token it
  submits (form field or header) equals the token in its cookie, compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from secrets import token_urlsafe

__all__ = [
    "DEFAULT_MAX_AGE",
    "MAX_CLOCK_SKEW",
    "MIN_SECRET_BYTES",
    "CookieSigner",
    "new_xsrf_token",
    "xsrf_tokens_match",
]

DEFAULT_MAX_AGE = 31 * 24 * 3600
MAX_CLOCK_SKEW = 300
MIN_SECRET_BYTES = 16

_VERSION = "v1"
_KEY_CONTEXT = b"rtserve cookie signing v1"
_MAC_CHARS = 43  # unpadded base64 of a 32-byte SHA-256 digest
_MAX_TIMESTAMP_DIGITS = 15
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class CookieSigner:
    """Sign cookie values with the first secret and verify them with any of the secrets."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[str | bytes]) -> None:
        """Take secrets newest first; raise ValueError if none, or any under 16 bytes."""
        if isinstance(secrets, str | bytes):
            raise TypeError("secrets must be a sequence of secrets, not a single secret")
        keys: list[bytes] = []
        for secret in secrets:
            if not isinstance(secret, str | bytes):
                raise TypeError("each secret must be str or bytes")
            raw = secret.encode("utf-8") if isinstance(secret, str) else secret
            if len(raw) < MIN_SECRET_BYTES:
                raise ValueError(f"each secret must be at least {MIN_SECRET_BYTES} bytes long")
            # A derived key keeps these MACs apart from any other use of the same secret.
            keys.append(hmac.new(raw, _KEY_CONTEXT, hashlib.sha256).digest())
        if not keys:
            raise ValueError("at least one secret is required")
        self._keys = tuple(keys)

    def __repr__(self) -> str:
        return f"CookieSigner(<{len(self._keys)} secrets>)"

    def sign(self, name: str, value: str | bytes, *, timestamp: int | None = None) -> str:
        """Return `value` (str is UTF-8 encoded) signed for cookie `name` at `timestamp`.

        `timestamp` is in whole seconds since the epoch and defaults to now.
        """
        raw = value.encode("utf-8") if isinstance(value, str) else value
        stamp = int(time.time()) if timestamp is None else int(timestamp)
        if stamp < 0:
            raise ValueError("timestamp must not be negative")
        payload = f"{_VERSION}.{stamp}.{_b64encode(raw)}"
        return f"{payload}.{_mac(self._keys[0], payload, name)}"

    def unsign(
        self,
        name: str,
        signed: str | None,
        *,
        max_age: float | None = DEFAULT_MAX_AGE,
        now: float | None = None,
    ) -> bytes | None:
        """Return the value `signed` carries for cookie `name`, or None if it is not valid.

        `max_age` (seconds, None for no limit) bounds the age; `now` defaults to the clock.
        """
        if not isinstance(signed, str) or not signed.isascii():
            return None
        fields = signed.split(".")
        if len(fields) != 4:
            return None
        version, stamp_text, value_text, mac_text = fields
        if (
            version != _VERSION
            or not _is_canonical_int(stamp_text)
            or not _is_b64(value_text)
            or len(mac_text) != _MAC_CHARS
            or not _is_b64(mac_text)
        ):
            return None
        payload = signed[: -len(mac_text) - 1]
        given = mac_text.encode("ascii")
        valid = False
        # Check every key so the time taken does not reveal which one matched.
        for key in self._keys:
            expected = _mac(key, payload, name).encode("ascii")
            valid = hmac.compare_digest(expected, given) or valid
        if not valid:
            return None
        stamp = int(stamp_text)
        current = time.time() if now is None else now
        if stamp > current + MAX_CLOCK_SKEW:
            return None
        if max_age is not None and current - stamp > max_age:
            return None
        return _b64decode(value_text)


def _mac(key: bytes, payload: str, name: str) -> str:
    # The payload's three fields never contain ".", so appending the name after one is
    # unambiguous whatever characters the name holds.
    message = payload.encode("ascii") + b"." + name.encode("utf-8", "surrogatepass")
    return _b64encode(hmac.new(key, message, hashlib.sha256).digest())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _is_b64(text: str) -> bool:
    return all(c in _B64_CHARS for c in text)


def _is_canonical_int(text: str) -> bool:
    return (
        0 < len(text) <= _MAX_TIMESTAMP_DIGITS
        and text.isascii()
        and text.isdigit()
        and (text == "0" or text[0] != "0")
    )


def new_xsrf_token() -> str:
    """Return a fresh random XSRF token (256 bits, URL- and cookie-safe)."""
    return token_urlsafe(32)


def xsrf_tokens_match(cookie_token: str | None, submitted: str | None) -> bool:
    """True if both tokens are non-empty strings and equal, compared in constant time."""
    if not isinstance(cookie_token, str) or not isinstance(submitted, str):
        return False
    if not cookie_token or not submitted:
        return False
    return hmac.compare_digest(
        cookie_token.encode("utf-8", "surrogatepass"),
        submitted.encode("utf-8", "surrogatepass"),
    )
