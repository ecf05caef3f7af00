"""Who gets in, over every transport: bad tokens on /rt/ws, SSE, long-poll and client publish;
cross-origin WebSockets; client publishes to server-only channels.

Not repeated here (already covered):
- token verification itself (expired, tampered payload and signature, alg=none, HS512, wrong
  secret, rotation, bad claims): tests/test_tokens.py;
- /rt/ws `connect` with a garbage or expired token, a connection or subscription token of
  another channel or user, `require_token`, expiry on a live connection:
  tests/test_channels.py (test_tokens_guard_connect_and_token_channels, test_required_token,
  test_token_expiring_on_a_live_connection_closes_it_unless_refreshed);
- SSE with a garbage or expired token, token channels without a token, client publish without
  a token: tests/test_sse_poll.py (test_sse_refusals_come_before_the_stream,
  test_client_publish_needs_a_token_when_required);
- the admin API without, with a wrong, truncated, extended or non-Bearer token (401), and
  refusing a non-loopback `admin.listen` without a token: tests/test_admin.py
  (test_http_needs_the_token_and_the_unix_socket_does_not,
  test_listen_beyond_loopback_needs_a_token);
- the origin policy of plain WebSocket routes: tests/test_websocket.py (test_origin_policy);
- the publish API off without `api_key` (403) and with a wrong key: tests/test_channels.py
  (test_publish_api_is_off_without_a_key, test_publish_api).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from rtserve import App, ChannelSettings
from rtserve.realtime.protocol import DisconnectCode, ErrorCode
from rtserve.testing import ThreadedServer
from rtserve.tokens import mint

SECRET = "a-test-secret-of-32-characters!!"
OTHER_SECRET = "another-secret-of-32-characters!"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: object) -> str:
    return _b64(json.dumps(obj).encode())


def tampered_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    middle = len(sig) // 2  # not the last character: its low bits may be padding
    flipped = "A" if sig[middle] != "A" else "B"
    return f"{head}.{payload}.{sig[:middle]}{flipped}{sig[middle + 1 :]}"


def tampered_payload(token: str, **claims: Any) -> str:
    head, payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    return f"{head}.{_segment(body)}.{sig}"


def alg_none(user: str, channels: list[str]) -> str:
    claims = {"sub": user, "channels": channels, "exp": int(time.time()) + 600}
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


def hs512(user: str, channels: list[str]) -> str:
    claims = {"sub": user, "channels": channels, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET + SECRET, algorithm="HS512")


def expired(user: str, channels: list[str] | None = None) -> str:
    return mint(SECRET, user, channels=channels or (), ttl=10, now=time.time() - 60)


def bad_tokens(user: str, channels: list[str]) -> dict[str, str]:
    """Tokens that must be refused as invalid (101), never as merely expired."""
    good = mint(SECRET, user, channels=channels)
    return {
        "tampered signature": tampered_signature(good),
        "tampered payload (another user)": tampered_payload(good, sub="admin"),
        "tampered payload (more channels)": tampered_payload(good, channels=["*"]),
        "tampered payload (no expiry)": tampered_payload(
            expired(user, channels), exp=int(time.time()) + 3600
        ),
        "alg none": alg_none(user, channels),
        "alg HS512": hs512(user, channels),
        "wrong secret": mint(OTHER_SECRET, user, channels=channels),
        "expired with the wrong secret": mint(
            OTHER_SECRET, user, channels=channels, ttl=10, now=time.time() - 60
        ),
        "header only": good.split(".")[0],
        "empty": "",
    }


BAD = bad_tokens("u", ["secret:*"])


def make_app() -> App:
    app = App(channels=ChannelSettings(token_secret=SECRET, cors_origins=["https://ok.example"]))
    app.channel("news", history=10)  # publish: server only (the default)
    app.channel("chat:*", history=10, publish="clients")
    app.channel("secret:*", history=10, token=True, publish="clients")
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(), access_log=False) as srv:
        yield srv


def ws_url(server: ThreadedServer) -> str:
    return f"ws://127.0.0.1:{server.port}/rt/ws"


class Session:
    def __init__(self, server: ThreadedServer, **kw: Any) -> None:
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(ws_url(server), open_timeout=5, close_timeout=2, **kw)
        )
        self.next_id = 0

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "op": op, **fields}))
        while True:
            message = json.loads(self.ws.recv(timeout=5))
            if "push" not in message:
                assert message["id"] == self.next_id, message
                return message  # type: ignore[no-any-return]

    def error(self, op: str, **fields: Any) -> int:
        reply = self.call(op, **fields)
        assert "error" in reply, reply
        return int(reply["error"]["code"])

    def closed_with(self) -> int | None:
        try:
            while True:
                self.ws.recv(timeout=5)
        except TimeoutError:
            raise AssertionError("the server did not close") from None
        except Exception:
            pass
        return self.ws.close_code  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stack.close()


@pytest.mark.parametrize("name", sorted(BAD))
def test_connect_with_a_bad_token_is_101_then_4001(server: ThreadedServer, name: str) -> None:
    s = Session(server)
    try:
        assert s.error("connect", token=BAD[name]) == ErrorCode.UNAUTHORIZED
        assert s.closed_with() == DisconnectCode.UNAUTHORIZED
    finally:
        s.close()


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_subscription_tokens_are_refused_and_the_connection_stays(
    server: ThreadedServer, name: str
) -> None:
    s = Session(server)
    try:
        s.call("connect", token=mint(SECRET, "u"))
        assert s.error("subscribe", channel="secret:a", token=BAD[name]) == ErrorCode.UNAUTHORIZED
        assert s.error("refresh", token=BAD[name]) == ErrorCode.UNAUTHORIZED
        assert s.call("ping") == {"id": 4, "result": {}}
    finally:
        s.close()


def test_expired_and_wrong_channel_subscription_tokens(server: ThreadedServer) -> None:
    s = Session(server)
    try:
        s.call("connect", token=mint(SECRET, "u"))
        old = expired("u", ["secret:a"])
        assert s.error("subscribe", channel="secret:a", token=old) == ErrorCode.TOKEN_EXPIRED
        elsewhere = mint(SECRET, "u", channels=["secret:b"])
        code = s.error("subscribe", channel="secret:a", token=elsewhere)
        assert code == ErrorCode.PERMISSION_DENIED
        # a token for a token channel does not make a server-only channel publishable
        both = mint(SECRET, "u", channels=["secret:*", "news"])
        assert "result" in s.call("subscribe", channel="news", token=both)
        assert s.error("publish", channel="news", data=1) == ErrorCode.PERMISSION_DENIED
        assert s.error("publish", channel="secret:a", data=1) == ErrorCode.PERMISSION_DENIED
        assert "result" in s.call("subscribe", channel="secret:a", token=both)
        assert "result" in s.call("publish", channel="secret:a", data=1)
        assert s.error("refresh", token=expired("u")) == ErrorCode.TOKEN_EXPIRED
    finally:
        s.close()


def test_cross_origin_websocket_is_403(server: ThreadedServer) -> None:
    """/rt/ws has the server's WebSocket origin policy (same origin by default); the channel
    layer's cors_origins are for the HTTP endpoints only and do not open /rt/ws."""
    for origin in ("https://evil.example", "https://ok.example", "null", "http://127.0.0.1:1"):
        with pytest.raises(InvalidStatus) as info:
            connect(ws_url(server), origin=origin, open_timeout=5)  # type: ignore[call-overload]
        assert info.value.response.status_code == 403, origin
    with connect(ws_url(server), origin=f"http://127.0.0.1:{server.port}") as ws:  # type: ignore[call-overload]
        ws.send('{"id": 1, "op": "connect"}')
        assert "result" in json.loads(ws.recv(timeout=5))


def fetch(
    server: ThreadedServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        payload = None if body is None else json.dumps(body)
        send = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=payload, headers=send)
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, json.loads(data) if data else None
    finally:
        conn.close()


def q(token: str) -> str:
    return urllib.parse.quote(token, safe="")


ENDPOINTS = [
    "/rt/sse?channel=news&token={}",
    "/rt/poll?channel=news&timeout=0&token={}",
    "/rt/history?channel=news&token={}",
    "/rt/presence?channel=chat:a&token={}",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.split("?")[0])
def test_http_endpoints_refuse_bad_tokens_with_401(server: ThreadedServer, endpoint: str) -> None:
    for name, token in BAD.items():
        if not token:
            continue  # an empty token= is no token: anonymous, as the docs say
        status, body = fetch(server, "GET", endpoint.format(q(token)))
        assert status == 401, name
        assert body["error"]["code"] == ErrorCode.UNAUTHORIZED, name
    status, body = fetch(server, "GET", endpoint.format(q(expired("u"))))
    assert status == 401 and body["error"]["code"] == ErrorCode.TOKEN_EXPIRED


def test_http_token_channels_need_the_right_token(server: ThreadedServer) -> None:
    elsewhere = mint(SECRET, "u", channels=["secret:b"])
    for path in ("/rt/poll?channel=secret:a&timeout=0", "/rt/history?channel=secret:a"):
        status, body = fetch(server, "GET", path + f"&token={q(elsewhere)}")
        assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED, path
        status, body = fetch(server, "GET", path)
        assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED, path


def test_client_publish_over_http_with_bad_tokens_and_to_server_only_channels(
    server: ThreadedServer,
) -> None:
    path = "/rt/client/publish"
    for name, token in BAD.items():
        if not token:
            continue
        auth = {"Authorization": f"Bearer {token}"}
        status, body = fetch(server, "POST", path, {"channel": "chat:a", "data": 1}, auth)
        assert status == 401 and body["error"]["code"] == ErrorCode.UNAUTHORIZED, name
    good = {"Authorization": f"Bearer {mint(SECRET, 'u', channels=['secret:*'])}"}
    status, body = fetch(server, "POST", path, {"channel": "news", "data": 1}, good)
    assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED
    elsewhere = {"Authorization": f"Bearer {mint(SECRET, 'u', channels=['secret:b'])}"}
    status, body = fetch(server, "POST", path, {"channel": "secret:a", "data": 1}, elsewhere)
    assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED
    status, body = fetch(server, "POST", path, {"channel": "secret:a", "data": 1}, good)
    assert status == 200, body
