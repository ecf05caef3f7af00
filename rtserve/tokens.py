"""Signed connection and subscription tokens: JWT with HS256 (PyJWT), one shared secret.

`mint(secret, user, channels=..., ttl=...)` makes a token; `verify(secrets, token)` checks it
and returns its `TokenClaims`, or raises `TokenExpired` / `TokenInvalid`. Claims: `sub` (the
user), `channels` (channel patterns the token allows subscribing to, same syntax as channel
rules: `news`, `user:{id}`, `chat:*`), `exp`, `iat` and `info` (shown in presence).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.types import Options

from rtserve.errors import RtserveError
from rtserve.realtime.rules import compile_pattern

ALGORITHM = "HS256"
MIN_SECRET_LENGTH = 32  # what HS256 needs (RFC 7518 3.2); PyJWT warns below


class TokenError(RtserveError):
    """A token that cannot be accepted."""


class TokenExpired(TokenError):
    """A token with a good signature whose `exp` has passed; `expires` is that unix time."""

    def __init__(self, expires: float) -> None:
        self.expires = expires
        super().__init__(f"token expired at unix time {expires:g}")


class TokenInvalid(TokenError):
    """A token that is malformed, badly signed, of another algorithm, or with bad claims."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token grants.

    user: the `sub` claim or None. channels: patterns this token allows subscribing to (empty:
    none). expires: unix time or None (no expiry). info: shown in presence, or None.
    """

    user: str | None
    channels: tuple[str, ...]
    expires: float | None
    info: dict[str, Any] | None
    _regexes: tuple[re.Pattern[str] | None, ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        # compile_pattern raises ValueError for a malformed pattern.
        object.__setattr__(self, "_regexes", tuple(compile_pattern(p) for p in self.channels))

    def allows(self, channel: str) -> bool:
        """True when one of the token's channel patterns matches `channel`."""
        for pattern, regex in zip(self.channels, self._regexes, strict=True):
            if regex is None:
                if channel == pattern:
                    return True
            elif regex.match(channel) is not None:
                return True
        return False


def mint(
    secret: str,
    user: str | None = None,
    *,
    channels: Iterable[str] = (),
    ttl: float | None = 3600,
    info: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A token for `user` allowing `channels`, expiring `ttl` seconds from now (None: never).

    Times are whole seconds: `iat` is now rounded down, `exp` is `iat` + ttl rounded up.
    Raises ValueError for a secret shorter than MIN_SECRET_LENGTH, a ttl that is not positive,
    or a malformed channel pattern (TypeError for `channels` given as one string).
    """
    _check_secret(secret)
    if isinstance(channels, str):
        raise TypeError("channels must be an iterable of patterns, not one string")
    patterns = list(channels)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"channel patterns must be strings, not {type(pattern).__name__}")
        compile_pattern(pattern)
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds or None, not {ttl!r}")
    if now is None:
        now = time.time()
    payload: dict[str, Any] = {}
    if user is not None:
        payload["sub"] = user
    payload["channels"] = patterns
    issued = math.floor(now)
    if ttl is not None:
        payload["exp"] = issued + math.ceil(ttl)
    payload["iat"] = issued
    if info is not None:
        payload["info"] = info
    try:
        return jwt.encode(payload, secret, algorithm=ALGORITHM)
    except jwt.InvalidKeyError as exc:
        raise ValueError(f"the secret cannot be used as an HMAC key: {exc}") from None


def verify(
    secrets: str | Sequence[str],
    token: str,
    *,
    leeway: float = 0,
    now: float | None = None,
) -> TokenClaims:
    """The claims of `token` if one of `secrets` (newest first, for rotation) signed it.

    Raises TokenExpired when the signature is good but `exp` <= now - leeway, TokenInvalid for
    anything else (bad signature, malformed, not HS256, bad claims), and ValueError for a
    secret shorter than MIN_SECRET_LENGTH or no secret at all.
    """
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise ValueError("verify needs at least one secret")
    for key in keys:
        _check_secret(key)
    payload = _decode(keys, token)
    if now is None:
        now = time.time()

    user = payload.get("sub")
    if user is not None and not isinstance(user, str):
        raise TokenInvalid("the 'sub' claim must be a string")
    channels = payload.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise TokenInvalid("the 'channels' claim must be a list of strings")
    info = payload.get("info")
    if info is not None and not isinstance(info, dict):
        raise TokenInvalid("the 'info' claim must be an object")
    nbf = _numeric_claim(payload, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise TokenInvalid("the token is not valid yet (nbf)")
    expires = _numeric_claim(payload, "exp")
    if expires is not None and expires <= now - leeway:
        raise TokenExpired(expires)
    try:
        return TokenClaims(user=user, channels=tuple(channels), expires=expires, info=info)
    except ValueError as exc:
        raise TokenInvalid(f"bad channel pattern in the 'channels' claim: {exc}") from None


def _check_secret(secret: str) -> None:
    if not isinstance(secret, str):
        raise TypeError(f"a secret must be a string, not {type(secret).__name__}")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"the token secret is {len(secret)} characters long; "
            f"at least {MIN_SECRET_LENGTH} are needed (try: python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))')"
        )


_DECODE_OPTIONS: Options = {
    # Times are checked in verify(), against its `now`.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


def _decode(keys: list[str], token: str) -> dict[str, Any]:
    """The payload of `token` under the first key whose signature matches, else TokenInvalid."""
    for key in keys:
        try:
            payload: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], options=_DECODE_OPTIONS
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAlgorithmError:
            raise TokenInvalid(
                f"the token's algorithm {_alg(token)} is refused (HS256 only)"
            ) from None
        except jwt.InvalidKeyError as exc:
            raise ValueError(f"a secret cannot be used as an HMAC key: {exc}") from None
        except jwt.DecodeError as exc:
            raise TokenInvalid(f"malformed token: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(str(exc)) from None
        return payload
    raise TokenInvalid("bad signature")


def _alg(token: str) -> str:
    try:
        return repr(jwt.get_unverified_header(token).get("alg"))
    except jwt.DecodeError:
        return "(unreadable)"


def _numeric_claim(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise TokenInvalid(f"the {name!r} claim must be a number")
