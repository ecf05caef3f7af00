from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings

import jwt
import pytest
from click.testing import CliRunner

from rtserve.cli.main import main
from rtserve.errors import RtserveError
from rtserve.tokens import (
    TokenClaims,
    TokenError,
    TokenExpired,
    TokenInvalid,
    mint,
    verify,
)

SECRET = "s3cret-for-tests-0123456789abcdef"  # 32+ characters: no PyJWT key-length warning
OLD_SECRET = "old-secret-for-tests-0123456789ab"
NOW = 1_700_000_000.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: object) -> str:
    return _b64(json.dumps(obj).encode())


# --- mint / verify ---


def test_round_trip() -> None:
    token = mint(SECRET, "ann", channels=["chat:*", "news"], ttl=60, info={"name": "Ann"}, now=NOW)
    claims = verify(SECRET, token, now=NOW)
    assert claims == TokenClaims(
        user="ann", channels=("chat:*", "news"), expires=NOW + 60, info={"name": "Ann"}
    )
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {
        "sub": "ann",
        "channels": ["chat:*", "news"],
        "exp": int(NOW) + 60,
        "iat": int(NOW),
        "info": {"name": "Ann"},
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_minimal_token_omits_optional_claims() -> None:
    token = mint(SECRET, ttl=None, now=NOW)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert payload == {"channels": [], "iat": int(NOW)}
    claims = verify(SECRET, token)
    assert claims == TokenClaims(user=None, channels=(), expires=None, info=None)
    assert not claims.allows("news")


def test_default_ttl_is_an_hour_from_now() -> None:
    before = time.time()
    token = mint(SECRET, "ann")
    claims = verify(SECRET, token)
    assert claims.expires is not None
    assert before + 3599 <= claims.expires <= time.time() + 3600
    payload = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert payload["exp"] - payload["iat"] == 3600


def test_fractional_times_are_whole_seconds() -> None:
    token = mint(SECRET, ttl=0.5, now=NOW + 0.7)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert (payload["iat"], payload["exp"]) == (int(NOW), int(NOW) + 1)


def test_channel_patterns() -> None:
    claims = verify(
        SECRET, mint(SECRET, "ann", channels=["chat:*", "user:{id}", "news"], now=NOW), now=NOW
    )
    assert claims.allows("chat:lobby")
    assert claims.allows("chat:room:42")  # `*` spans ':'
    assert not claims.allows("chat:")  # `*` matches at least one character
    assert not claims.allows("chat")
    assert claims.allows("user:42")
    assert not claims.allows("user:42:inbox")  # `{id}` stops at ':'
    assert not claims.allows("user:")
    assert claims.allows("news")
    assert not claims.allows("news:sports")
    assert not claims.allows("newsy")
    assert not claims.allows("other")


def test_literal_pattern_is_not_a_regex() -> None:
    claims = TokenClaims(user=None, channels=("a.b",), expires=None, info=None)
    assert claims.allows("a.b")
    assert not claims.allows("axb")


def test_expiry_uses_now_and_leeway() -> None:
    token = mint(SECRET, "ann", ttl=60, now=NOW)
    assert verify(SECRET, token, now=NOW + 59).user == "ann"
    with pytest.raises(TokenExpired) as info:
        verify(SECRET, token, now=NOW + 60)  # expired at exp itself (RFC 7519)
    assert info.value.expires == NOW + 60
    assert verify(SECRET, token, now=NOW + 70, leeway=11).user == "ann"
    with pytest.raises(TokenExpired):
        verify(SECRET, token, now=NOW + 70, leeway=10)


def test_error_classes() -> None:
    assert issubclass(TokenExpired, TokenError)
    assert issubclass(TokenInvalid, TokenError)
    assert issubclass(TokenError, RtserveError)
    assert not issubclass(TokenExpired, TokenInvalid)


def test_expired_with_wrong_secret_is_invalid_not_expired() -> None:
    token = mint(OLD_SECRET, "ann", ttl=60, now=NOW)
    with pytest.raises(TokenInvalid, match="bad signature"):
        verify(SECRET, token, now=NOW + 3600)


def test_tampered_payload_is_invalid() -> None:
    token = mint(SECRET, "ann", channels=["user:ann"], now=NOW)
    header, _, signature = token.split(".")
    forged = _segment({"sub": "ann", "channels": ["*"], "exp": NOW + 60})
    with pytest.raises(TokenInvalid):
        verify(SECRET, f"{header}.{forged}.{signature}", now=NOW)


def test_tampered_signature_is_invalid() -> None:
    token = mint(SECRET, "ann", now=NOW)
    head, _, sig = token.rpartition(".")
    sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(TokenInvalid):
        verify(SECRET, f"{head}.{sig}", now=NOW)


def test_wrong_secret_is_invalid() -> None:
    with pytest.raises(TokenInvalid, match="bad signature"):
        verify(SECRET, mint(OLD_SECRET, "ann", now=NOW), now=NOW)


@pytest.mark.parametrize("text", ["", "abc", "a.b.c", "a.b", "....", "not a token at all"])
def test_malformed_is_invalid(text: str) -> None:
    with pytest.raises(TokenInvalid):
        verify(SECRET, text, now=NOW)


def test_rotation() -> None:
    old_token = mint(OLD_SECRET, "ann", now=NOW)
    new_token = mint(SECRET, "bob", now=NOW)
    assert verify([SECRET, OLD_SECRET], old_token, now=NOW).user == "ann"
    assert verify([SECRET, OLD_SECRET], new_token, now=NOW).user == "bob"
    assert verify((OLD_SECRET,), old_token, now=NOW).user == "ann"
    with pytest.raises(TokenInvalid):
        verify([SECRET], old_token, now=NOW)
    with pytest.raises(ValueError, match="at least one secret"):
        verify([], old_token, now=NOW)


def test_alg_none_is_refused() -> None:
    payload = _segment({"sub": "ann", "channels": ["*"], "exp": NOW + 60})
    for header in ({"alg": "none", "typ": "JWT"}, {"alg": "None"}, {"alg": ""}, {"typ": "JWT"}):
        signing_input = f"{_segment(header)}.{payload}"
        with pytest.raises(TokenInvalid):
            verify(SECRET, signing_input + ".", now=NOW)
        # Even with a good HMAC-SHA256 signature, a header not saying HS256 is refused.
        mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(TokenInvalid):
            verify(SECRET, f"{signing_input}.{_b64(mac)}", now=NOW)
    unsigned = f"{_segment({'alg': 'none'})}.{payload}."
    with pytest.raises(TokenInvalid, match="'none' is refused"):
        verify(SECRET, unsigned, now=NOW)


def test_other_hmac_algorithm_is_refused() -> None:
    payload = {"sub": "ann", "channels": ["*"], "exp": int(NOW) + 60}
    for alg in ("HS384", "HS512"):
        token = jwt.encode(payload, SECRET + SECRET, algorithm=alg)
        jwt.decode(token, SECRET + SECRET, algorithms=[alg], options={"verify_exp": False})
        with pytest.raises(TokenInvalid, match=alg):
            verify(SECRET + SECRET, token, now=NOW)


def _signed(payload: dict[str, object]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"channels": "chat:*"}, "channels"),
        ({"channels": ["ok", 3]}, "channels"),
        ({"channels": {"a": 1}}, "channels"),
        ({"channels": ["user:{id"]}, "channel pattern"),
        ({"sub": 42}, None),
        ({"sub": ["ann"]}, None),
        ({"info": "x"}, "info"),
        ({"exp": "soon"}, "exp"),
        ({"exp": True}, "exp"),
        ({"nbf": NOW + 100}, "not valid yet"),
        ({"aud": "someone-else"}, None),
    ],
)
def test_bad_claims_are_invalid(payload: dict[str, object], message: str | None) -> None:
    with pytest.raises(TokenInvalid, match=message):
        verify(SECRET, _signed(payload), now=NOW)


def test_foreign_token_without_channels_allows_nothing() -> None:
    claims = verify(SECRET, _signed({"sub": "ann"}), now=NOW)
    assert claims.user == "ann"
    assert claims.channels == ()


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        mint("too-short", "ann")
    with pytest.raises(ValueError, match="at least 32"):
        mint("", "ann")
    with pytest.raises(ValueError, match="at least 32"):
        verify("too-short", mint(SECRET, "ann"))
    with pytest.raises(ValueError, match="at least 32"):
        verify([SECRET, ""], mint(SECRET, "ann"))


def test_thirty_two_character_secret_accepted_without_warning() -> None:
    secret = "0123456789abcdef" * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify(secret, mint(secret, "ann")).user == "ann"


def test_mint_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ttl"):
        mint(SECRET, ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        mint(SECRET, ttl=-5)
    with pytest.raises(ValueError, match="ttl"):
        mint(SECRET, ttl=float("inf"))
    with pytest.raises(TypeError):
        mint(SECRET, channels="chat:*")
    with pytest.raises(ValueError):
        mint(SECRET, channels=["user:{id"])


# --- CLI ---


def test_cli_mint_then_verify() -> None:
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "token",
            "mint",
            "--secret",
            SECRET,
            "--user",
            "ann",
            "--channel",
            "chat:*",
            "--channel",
            "user:{id}",
            "--ttl",
            "30m",
            "--info",
            '{"name": "Ann"}',
        ],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    claims = verify(SECRET, token)
    assert claims.user == "ann"
    assert claims.channels == ("chat:*", "user:{id}")
    assert claims.info == {"name": "Ann"}
    assert claims.expires is not None
    assert abs(claims.expires - (time.time() + 1800)) < 5

    result = runner.invoke(main, ["token", "verify", "--secret", SECRET, token])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["user"] == "ann"
    assert out["channels"] == ["chat:*", "user:{id}"]
    assert out["info"] == {"name": "Ann"}
    assert out["expires_unix"] == claims.expires
    assert isinstance(out["expires_unix"], int)
    assert out["expires"].endswith("Z") and out["expires"].startswith("20")


def test_cli_secret_from_env_and_no_expiry() -> None:
    runner = CliRunner(env={"RTSERVE_TOKEN_SECRET": SECRET + " with spaces"})
    result = runner.invoke(main, ["token", "mint", "--ttl", "none"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert verify(SECRET + " with spaces", token).expires is None
    result = runner.invoke(main, ["token", "verify", token])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["expires"] is None and out["expires_unix"] is None and out["user"] is None


def test_cli_verify_rotation() -> None:
    token = mint(OLD_SECRET, "ann")
    result = CliRunner().invoke(
        main, ["token", "verify", "--secret", SECRET, "--secret", OLD_SECRET, token]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user"] == "ann"


def test_cli_expired_exits_1() -> None:
    token = mint(SECRET, "ann", ttl=60, now=NOW)
    result = CliRunner().invoke(main, ["token", "verify", "--secret", SECRET, token])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: token expired at 2023-11-14T22:14:20Z\n"


def test_cli_invalid_exits_1() -> None:
    token = mint(OLD_SECRET, "ann")
    result = CliRunner().invoke(main, ["token", "verify", "--secret", SECRET, token])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: invalid token: bad signature\n"
    result = CliRunner().invoke(main, ["token", "verify", "--secret", SECRET, "garbage"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid token: malformed token")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mint", "--secret", SECRET, "--ttl", "soon"], "--ttl"),
        (["mint", "--secret", SECRET, "--ttl", "0"], "--ttl"),
        (["mint", "--secret", SECRET, "--ttl", "-5m"], "--ttl"),
        (["mint", "--secret", SECRET, "--info", "{nope"], "not valid JSON"),
        (["mint", "--secret", SECRET, "--info", "[1, 2]"], "JSON object"),
        (["mint", "--secret", SECRET, "--channel", "user:{id"], "--channel"),
        (["mint", "--secret", "short"], "at least 32"),
        (["mint"], "--secret"),
        (["verify", "--secret", "short", "x.y.z"], "at least 32"),
        (["verify", "--secret", SECRET], "TOKEN"),
    ],
)
def test_cli_bad_input_exits_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["token", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert SECRET not in result.stderr


def test_cli_does_not_echo_a_short_secret() -> None:
    result = CliRunner().invoke(main, ["token", "mint", "--secret", "hunter2hunter2"])
    assert result.exit_code == 2
    assert "14 characters" in result.stderr
    assert "hunter2" not in result.stderr


def test_cli_help_lists_token() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "token" in result.stdout
    result = CliRunner().invoke(main, ["token", "--help"])
    assert result.exit_code == 0
    assert "mint" in result.stdout and "verify" in result.stdout
