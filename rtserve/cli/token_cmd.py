"""`rtserve token mint|verify`: make and check channel tokens (see rtserve.tokens)."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import click

from rtserve.realtime.rules import compile_pattern
from rtserve.tokens import MIN_SECRET_LENGTH, TokenExpired, TokenInvalid, mint, verify

SECRET_ENVVAR = "RTSERVE_TOKEN_SECRET"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# Option callbacks rather than ParamType subclasses: ParamType is generic only from click 8.5.


def _check_secret(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # The value is never echoed back.
    if len(value) < MIN_SECRET_LENGTH:
        raise click.BadParameter(
            f"the secret is {len(value)} characters long; at least {MIN_SECRET_LENGTH} "
            "are needed (make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            ctx,
            param,
        )
    return value


def _check_secrets(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    # The environment variable holds one secret, spaces and all (as for `mint`).
    if not value and os.environ.get(SECRET_ENVVAR):
        value = (os.environ[SECRET_ENVVAR],)
    if not value:
        raise click.MissingParameter(ctx=ctx, param=param)
    return tuple(_check_secret(ctx, param, secret) for secret in value)


def _parse_ttl(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    text = value.strip().lower()
    if text == "none":
        return None
    m = _DURATION.match(text)
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not 0 < seconds < float("inf"):
        raise click.BadParameter(
            f"{value!r} is not a duration like 3600, 30m, 1h, 7d or none", ctx, param
        )
    return seconds


def _parse_info(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", ctx, param) from None
    if not isinstance(data, dict):
        raise click.BadParameter('must be a JSON object, like \'{"name": "Ann"}\'', ctx, param)
    return data


def _check_patterns(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for pattern in value:
        try:
            compile_pattern(pattern)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.group("token")
def token() -> None:
    """Mint and verify signed channel tokens (JWT, HS256)."""


@token.command("mint")
@click.option(
    "--secret",
    envvar=SECRET_ENVVAR,
    show_envvar=True,
    required=True,
    callback=_check_secret,
    help="Signing secret.",
)
@click.option("--user", help="The user (`sub` claim).")
@click.option(
    "--channel",
    "channels",
    multiple=True,
    callback=_check_patterns,
    help="A channel pattern the token allows (`news`, `user:{id}`, `chat:*`); repeatable.",
)
@click.option(
    "--ttl",
    default="1h",
    callback=_parse_ttl,
    show_default=True,
    help="Lifetime: seconds, 30m, 1h, 7d, or none.",
)
@click.option("--info", callback=_parse_info, help="JSON object shown in presence.")
def mint_cmd(
    secret: str,
    user: str | None,
    channels: tuple[str, ...],
    ttl: float | None,
    info: dict[str, Any] | None,
) -> None:
    """Print a new token."""
    try:
        click.echo(mint(secret, user, channels=channels, ttl=ttl, info=info))
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


@token.command("verify", short_help="Check a token and print its claims.")
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    callback=_check_secrets,
    help=f"Signing secret; repeat for rotation, newest first. [env var: {SECRET_ENVVAR}]",
)
@click.option(
    "--leeway", type=click.FloatRange(min=0), default=0, help="Seconds of grace on expiry."
)
@click.argument("token_text", metavar="TOKEN")
def verify_cmd(secrets: tuple[str, ...], leeway: float, token_text: str) -> None:
    """Check TOKEN and print its claims as JSON; exit 1 if it is expired or invalid."""
    try:
        claims = verify(secrets, token_text.strip(), leeway=leeway)
    except TokenExpired as exc:
        click.echo(f"error: token expired at {_iso(exc.expires)}", err=True)
        sys.exit(1)
    except TokenInvalid as exc:
        click.echo(f"error: invalid token: {exc}", err=True)
        sys.exit(1)
    out = {
        "user": claims.user,
        "channels": list(claims.channels),
        "expires": None if claims.expires is None else _iso(claims.expires),
        "expires_unix": _unix(claims.expires),
        "info": claims.info,
    }
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


def _unix(unix: float | None) -> float | int | None:
    return int(unix) if unix is not None and unix.is_integer() else unix


def _iso(unix: float) -> str:
    try:
        return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"unix time {unix:g}"
