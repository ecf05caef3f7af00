"""Channels without WebSocket: Server-Sent Events, long polling, history GET, client publish.

Real HTTP clients over loopback: stdlib http.client read incrementally for SSE, urllib for
the request/response endpoints, curl (when installed) for one stream.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from rtserve import (
    App,
    ChannelContext,
    ChannelError,
    ChannelSettings,
    ConnectContext,
    ConnectResult,
)
from rtserve.realtime.protocol import ErrorCode
from rtserve.testing import ThreadedServer, serve_app
from rtserve.tokens import mint
from tests.support.sse import SSE

# Every test runs on each broker (tests/brokers.py): App() gets one of the backend.
pytestmark = pytest.mark.usefixtures("app_broker")

SECRET = "a-test-secret-of-32-characters!!"


def make_app(**settings: Any) -> App:
    app = App(channels=ChannelSettings(token_secret=SECRET, **settings))
    app.channel("news", history=100)
    app.channel("chat:*", history=100, publish="clients", publish_rate=1, publish_burst=2)
    app.channel("secret:*", history=10, token=True, publish="clients")
    app.channel("nohist")

    def no_swearing(ctx: ChannelContext) -> None:
        if ctx.data == "darn":
            raise ChannelError(1001, "mind your language")

    app.channel("guarded", history=10, publish="clients", on_publish=no_swearing)
    return app


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def post(
    port: int, body: Any, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/rt/client/publish",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def wait_for(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_sse_receives_publications_with_ids_and_resumes_with_last_event_id() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        stream = SSE(server.port, "channel=news")
        assert stream.response.status == 200
        headers = stream.response.headers
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        subscribed = stream.next("subscribed")
        result = json.loads(subscribed["data"])
        epoch = result["epoch"]
        assert result["channel"] == "news" and result["offset"] == 0
        assert subscribed["id"] == f"news:0:{epoch}"
        for i in range(3):
            server.call(app.publish, "news", {"n": i})
        pubs = [stream.next() for _ in range(3)]
        assert [p["id"] for p in pubs] == [f"news:{i}:{epoch}" for i in (1, 2, 3)]
        first = json.loads(pubs[0]["data"])
        assert first == {"push": "pub", "channel": "news", "offset": 1, "data": {"n": 0}}
        stream.close()
        wait_for(lambda: app.hub.subscriber_count("news") == 0)

        for i in range(3, 7):  # missed while away
            server.call(app.publish, "news", {"n": i})
        again = SSE(server.port, "channel=news", {"Last-Event-ID": pubs[-1]["id"]})
        subscribed = again.next("subscribed")
        result = json.loads(subscribed["data"])
        assert result["recovered"] is True and result["offset"] == 7
        assert subscribed["id"] == pubs[-1]["id"]  # where it stands before the recovered ones
        recovered = [again.next() for _ in range(4)]
        assert [json.loads(p["data"])["data"]["n"] for p in recovered] == [3, 4, 5, 6]
        assert [p["id"] for p in recovered] == [f"news:{i}:{epoch}" for i in range(4, 8)]
        server.call(app.publish, "news", "live")
        live = again.next()
        assert live["id"] == f"news:8:{epoch}"  # nothing repeated before it
        again.close()

        # `since` does the same; a position of another epoch is not recovered
        third = SSE(server.port, f"channel=news&since=news:6:{epoch}")
        assert json.loads(third.next("subscribed")["data"])["recovered"] is True
        assert [third.next()["id"] for _ in range(2)] == [f"news:7:{epoch}", f"news:8:{epoch}"]
        third.close()
        lost = SSE(server.port, "channel=news&since=news:3:otherepoch")
        result = json.loads(lost.next("subscribed")["data"])
        assert result["recovered"] is False and result["offset"] == 8
        lost.close()


def test_sse_heartbeat_and_several_channels() -> None:
    app = make_app(sse_heartbeat=0.1)
    with ThreadedServer(app) as server:
        stream = SSE(server.port, "channel=news&channel=chat:a")
        seen = [stream.event() for _ in range(2)]
        assert [e["event"] for e in seen] == ["subscribed", "subscribed"]
        started = time.monotonic()
        assert stream.event() == {"comment": "ping"}
        assert stream.event() == {"comment": "ping"}
        assert time.monotonic() - started < 2
        server.call(app.publish, "chat:a", "hi")
        assert json.loads(stream.next()["data"])["channel"] == "chat:a"
        stream.close()


def test_sse_probe_answers_as_the_stream_would_without_one() -> None:
    """`probe=1` (how rtserve.js reads a refusal EventSource hides): 204 where the stream
    would start, the stream's JSON error where it would be refused; nothing subscribes."""
    app = make_app()
    app.channel("room", presence=True, join_leave=True)
    with ThreadedServer(app) as server:
        port = server.port
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/rt/sse?channel=room&channel=news&probe=1", timeout=10
        ) as response:
            assert response.status == 204 and response.read() == b""
        status, body, _ = get(port, "/rt/sse?channel=room&channel=secret:x&probe=1")
        assert status == 403 and body["error"]["channel"] == "secret:x"
        status, body, _ = get(port, "/rt/sse?channel=room&token=garbage&probe=1")
        assert status == 401 and body["error"]["code"] == ErrorCode.UNAUTHORIZED
        assert get(port, "/rt/presence?channel=room")[1] == {"clients": {}}
        assert server.call(lambda: asyncio.sleep(0, app.hub.channels())) == {}


def test_sse_refusals_come_before_the_stream() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        port = server.port
        status, body, _ = get(port, "/rt/sse?channel=nope")
        assert status == 404 and body["error"]["code"] == ErrorCode.UNKNOWN_CHANNEL
        # A channel's refusal names it (the client ends that one and streams the others).
        status, body, _ = get(port, "/rt/sse?channel=news&channel=secret:x")
        assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED
        assert body["error"]["channel"] == "secret:x"
        status, body, _ = get(port, "/rt/sse?channel=news&token=garbage")
        assert status == 401 and body["error"]["code"] == ErrorCode.UNAUTHORIZED
        assert "channel" not in body["error"]  # the connection's refusal names none
        expired = mint(SECRET, "u", ttl=10, now=time.time() - 100)
        status, body, _ = get(port, f"/rt/sse?channel=news&token={expired}")
        assert status == 401 and body["error"]["code"] == ErrorCode.TOKEN_EXPIRED
        status, body, _ = get(port, "/rt/sse")
        assert status == 400 and body["error"]["code"] == ErrorCode.BAD_REQUEST
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("HEAD", "/rt/sse?channel=news")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
        conn.close()
        # refused half-way: the channel subscribed first is left again
        status, _, _ = get(port, "/rt/sse?channel=news&channel=secret:x")
        assert status == 403
        assert app.hub.subscriber_count("news") == 0
        token = mint(SECRET, "ann", channels=["secret:*"])
        stream = SSE(port, f"channel=secret:x&token={token}")
        assert stream.response.status == 200
        assert json.loads(stream.next("subscribed")["data"])["channel"] == "secret:x"
        stream.close()


def test_sse_token_expiry_ends_the_stream_with_an_error_event() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        token = mint(SECRET, "short", ttl=1)
        stream = SSE(server.port, f"channel=news&token={token}")
        stream.next("subscribed")
        error = stream.next("error")
        assert json.loads(error["data"])["code"] == ErrorCode.TOKEN_EXPIRED
        with pytest.raises(EOFError):
            stream.event()
        wait_for(lambda: app.hub.subscriber_count("news") == 0)
        assert app.hub.users == {}


def test_sse_stream_ends_on_server_shutdown_and_leaves_the_hub() -> None:
    app = make_app()

    async def main() -> None:
        async with serve_app(app) as server:
            stream = await asyncio.to_thread(SSE, server.port, "channel=news&channel=chat:z")
            await asyncio.to_thread(stream.next, "subscribed")
            assert app.hub.subscriber_count("news") == 1
            ended = asyncio.create_task(asyncio.to_thread(_read_to_end, stream))
            poll = asyncio.create_task(
                asyncio.to_thread(get, server.port, "/rt/poll?channel=news&timeout=30")
            )
            for _ in range(500):
                if app.hub.subscriber_count("news") == 2:
                    break
                await asyncio.sleep(0.01)
            assert app.hub.subscriber_count("news") == 2
            started = time.monotonic()
            await server.shutdown(grace=5.0)
            assert time.monotonic() - started < 2  # ended, not cut off after the grace
            assert (await ended) == "eof"
            status, body, _ = await poll  # answered with what there was
            assert status == 200 and body["channels"]["news"]["publications"] == []
            assert app.hub.channels() == {}

    asyncio.run(asyncio.wait_for(main(), 20))


def _read_to_end(stream: SSE) -> str:
    try:
        while True:
            stream.event()
    except EOFError:
        return "eof"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_sse_with_curl() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        process = subprocess.Popen(
            ["curl", "-sN", "--max-time", "10", f"{server.url}/rt/sse?channel=news"],
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            lines: list[bytes] = []

            def read_until(text: bytes) -> None:  # bounded: curl gives up after 10 s
                while not lines or text not in lines[-1]:
                    lines.append(process.stdout.readline())  # type: ignore[union-attr]
                    assert lines[-1], f"curl ended before {text!r}: {lines}"

            # subscribed, not just counted (with Redis the node subscribes after the count)
            read_until(b"event: subscribed")
            server.call(app.publish, "news", "via curl")
            read_until(b"via curl")
            assert lines[-3].startswith(b"id: news:1:")
            assert lines[-2] == b"event: pub\n"
        finally:
            process.kill()
            process.wait()


def test_many_pollers_released_by_one_publish() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        results: list[Any] = []
        lock = threading.Lock()

        def poll() -> None:
            outcome = get(server.port, "/rt/poll?channel=news&timeout=20")
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=poll) for _ in range(50)]
        for thread in threads:
            thread.start()
        # every subscribe done (counted at its end: with Redis the node subscribes and reads
        # the position after the subscriber is counted, and a publish before that is missed)
        wait_for(lambda: app.hub.stats.subscriptions == 50, 10)
        started = time.monotonic()
        server.call(app.publish, "news", "wake up")
        for thread in threads:
            thread.join(10)
        assert time.monotonic() - started < 5
        assert len(results) == 50
        for status, body, _ in results:
            assert status == 200
            channel = body["channels"]["news"]
            assert [p["data"] for p in channel["publications"]] == ["wake up"]
            assert channel["offset"] == 1 and channel["recovered"] is True
        assert app.hub.subscriber_count("news") == 0


def test_polling_loses_nothing_between_polls_and_times_out_with_positions() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        port = server.port
        started = time.monotonic()
        status, body, _ = get(port, "/rt/poll?channel=news&timeout=0.3")
        assert status == 200 and time.monotonic() - started >= 0.25
        position = body["channels"]["news"]
        assert position["publications"] == [] and position["offset"] == 0
        epoch = position["epoch"]
        assert app.hub.subscriber_count("news") == 0  # removed on timeout

        for i in range(3):  # nobody is polling
            server.call(app.publish, "news", i)
        status, body, _ = get(port, f"/rt/poll?channel=news&since=news:0:{epoch}&timeout=5")
        got = body["channels"]["news"]
        assert [p["data"] for p in got["publications"]] == [0, 1, 2]
        assert got["offset"] == 3 and got["recovered"] is True

        # next poll from there waits; a publish for another channel polled too releases it
        def later() -> None:
            time.sleep(0.2)
            server.call(app.publish, "chat:b", "b1")

        threading.Thread(target=later).start()
        status, body, _ = get(
            port,
            f"/rt/poll?channel=news&since=news:3:{epoch}&channel=chat:b&timeout=10",
        )
        channels = body["channels"]
        assert channels["news"]["publications"] == [] and channels["news"]["offset"] == 3
        assert [p["data"] for p in channels["chat:b"]["publications"]] == ["b1"]

        status, body, _ = get(port, "/rt/poll?channel=news&since=news:1:otherepoch&timeout=5")
        assert body["channels"]["news"]["recovered"] is False
        assert body["channels"]["news"]["offset"] == 3

        status, body, _ = get(port, "/rt/poll?channel=news&channel=nohist&timeout=1")
        assert status == 503 and body["error"]["code"] == ErrorCode.NOT_AVAILABLE
        assert body["error"]["channel"] == "nohist"
        status, body, _ = get(port, "/rt/poll?channel=secret:x&timeout=1")
        assert status == 403
        status, body, _ = get(port, "/rt/poll?channel=news&timeout=-1")
        assert status == 400


def test_poll_of_a_client_that_goes_away_leaves_the_hub() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/rt/poll?channel=news&timeout=30")
        wait_for(lambda: app.hub.subscriber_count("news") == 1)
        conn.close()
        wait_for(lambda: app.hub.subscriber_count("news") == 0)


def test_history_get() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        port = server.port
        for i in range(5):
            server.call(app.publish, "news", i)
        status, body, _ = get(port, "/rt/history?channel=news")
        assert status == 200
        assert [p["data"] for p in body["publications"]] == [0, 1, 2, 3, 4]
        epoch = body["epoch"]
        status, body, _ = get(port, f"/rt/history?channel=news&since=news:2:{epoch}&limit=1")
        assert [p["offset"] for p in body["publications"]] == [3]
        status, body, _ = get(port, "/rt/history?channel=news&limit=2")
        assert [p["offset"] for p in body["publications"]] == [4, 5]
        status, body, _ = get(port, "/rt/history?channel=news&since=news:2:other")
        assert status == 400 and body["error"]["code"] == ErrorCode.UNRECOVERABLE
        status, body, _ = get(port, "/rt/history?channel=secret:a")
        assert status == 403
        token = mint(SECRET, "ann", channels=["secret:a"])
        status, body, _ = get(port, f"/rt/history?channel=secret:a&token={token}")
        assert status == 200 and body["publications"] == []
        status, body, _ = get(port, "/rt/history?channel=nohist")
        assert status == 503 and body["error"]["code"] == ErrorCode.NOT_AVAILABLE


def test_client_publish_over_post() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        port = server.port
        stream = SSE(port, "channel=chat:room")
        stream.next("subscribed")
        token = mint(SECRET, "ann", info={"name": "Ann"})
        status, body, _ = post(port, {"channel": "chat:room", "data": "hello"}, token)
        assert status == 200 and body["offset"] == 1
        pub = json.loads(stream.next()["data"])
        assert pub["data"] == "hello" and pub["info"]["user"] == "ann"
        stream.close()
        # the burst is 2 a second per user: the third is refused
        status, _, _ = post(port, {"channel": "chat:room", "data": 2}, token)
        assert status == 200
        status, body, _ = post(port, {"channel": "chat:room", "data": 3}, token)
        assert status == 429 and body["error"]["code"] == ErrorCode.RATE_LIMITED
        assert body["error"]["temporary"] is True  # the same request may pass later
        # another user (and anonymous clients, by address) have their own budget
        status, _, _ = post(port, {"channel": "chat:room", "data": 4}, mint(SECRET, "bob"))
        assert status == 200
        status, _, _ = post(port, {"channel": "chat:room", "data": 5})
        assert status == 200
        status, body, _ = post(port, {"channel": "news", "data": 1}, token)
        assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED
        assert body["error"]["temporary"] is False
        status, body, _ = post(port, {"channel": "secret:x", "data": 1}, token)
        assert status == 403
        allowed = mint(SECRET, "ann", channels=["secret:x"])
        status, body, _ = post(port, {"channel": "secret:x", "data": 1}, allowed)
        assert status == 200
        status, body, _ = post(port, {"channel": "guarded", "data": "darn"}, token)
        assert status == 400 and body["error"] == {
            "code": 1001,
            "message": "mind your language",
            "temporary": False,
        }
        status, body, _ = post(port, {"channel": "guarded", "data": "x" * 70000}, token)
        assert status == 413
        status, body, _ = post(port, {"channel": "guarded", "data": 1}, "bad")
        assert status == 401
        status, body, _ = post(port, {"channel": "nope", "data": 1}, token)
        assert status == 404
        status, body, _ = post(port, {"channel": "guarded"}, token)
        assert status == 400
        status, body, _ = post(port, "x", token, {"content-type": "text/plain"})
        assert status == 400


def test_client_publish_needs_a_token_when_required() -> None:
    app = make_app(require_token=True)
    with ThreadedServer(app) as server:
        status, body, _ = post(server.port, {"channel": "guarded", "data": 1})
        assert status == 401 and body["error"]["code"] == ErrorCode.UNAUTHORIZED
        status, body, _ = post(server.port, {"channel": "guarded", "data": 1}, mint(SECRET, "u"))
        assert status == 200


def test_cors_headers_and_preflight() -> None:
    app = make_app(cors_origins=["https://app.example"])
    with ThreadedServer(app) as server:
        port = server.port
        origin = {"Origin": "https://app.example"}
        _, _, headers = get(port, "/rt/history?channel=news", origin)
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["vary"] == "Origin"
        _, _, headers = get(port, "/rt/history?channel=news", {"Origin": "https://evil.example"})
        assert headers["access-control-allow-origin"] is None
        _, _, headers = get(port, "/rt/poll?channel=nope", origin)
        assert headers["access-control-allow-origin"] == "https://app.example"
        stream = SSE(port, "channel=news", origin)
        assert stream.response.headers["access-control-allow-origin"] == "https://app.example"
        stream.close()
        status, _, headers = post(port, {"channel": "guarded", "data": 1}, None, origin)
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "OPTIONS",
            "/rt/client/publish",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 204
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert response.headers["access-control-allow-methods"] == "POST"
        assert response.headers["access-control-allow-headers"] == "Authorization, Content-Type"
        conn.close()

    plain = make_app()
    with ThreadedServer(plain) as server:
        _, _, headers = get(
            server.port, "/rt/history?channel=news", {"Origin": "https://x.example"}
        )
        assert headers["access-control-allow-origin"] is None
    star = make_app(cors_origins=["*"])
    with ThreadedServer(star) as server:
        _, _, headers = get(
            server.port, "/rt/history?channel=news", {"Origin": "https://x.example"}
        )
        assert headers["access-control-allow-origin"] == "https://x.example"


def test_slow_sse_consumer_is_disconnected_and_bounded() -> None:
    app = App(channels=ChannelSettings())
    app.channel("feed", slow_consumer="disconnect")
    app.channel("latest", slow_consumer="conflate", max_pending=10)
    app.channel("backlog", slow_consumer="drop_oldest", max_pending=10)
    with ThreadedServer(app) as server:
        for channel in ("feed", "latest", "backlog"):
            stream = SSE(server.port, f"channel={channel}")
            stream.next("subscribed")
            # the client reads nothing more: the server's buffer fills and the policy applies
            big = "x" * 60000
            for i in range(200):
                server.call(app.publish, channel, {"i": i, "pad": big})
                if channel == "feed" and app.hub.subscriber_count("feed") == 0:
                    break
            if channel == "feed":
                wait_for(lambda: app.hub.subscriber_count("feed") == 0)
                assert app.hub.stats.slow_disconnected == 1
            else:
                assert app.hub.subscriber_count(channel) == 1
                # (with Redis, deliveries follow the publishes through pub/sub)
                if channel == "latest":
                    wait_for(lambda: app.hub.stats.conflated > 0)
                else:
                    wait_for(lambda: app.hub.stats.dropped > 0)
                # reading again, the client gets what was held, ending with the newest
                last = -1
                while last != 199:
                    data = json.loads(stream.next()["data"])["data"]
                    assert data["i"] > last
                    last = data["i"]
            stream.close()
        wait_for(lambda: app.hub.channels() == {})


def test_unquoted_query_of_channel_names() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        query = urllib.parse.urlencode({"channel": "chat:x y"})
        status, body, _ = get(server.port, f"/rt/history?{query}")
        assert status == 400 and body["error"]["code"] == ErrorCode.BAD_REQUEST


def test_sse_join_and_leave_events() -> None:
    app = App(channels=ChannelSettings(token_secret=SECRET))
    app.channel("room", join_leave=True, presence=True)
    with ThreadedServer(app) as server:
        first = SSE(server.port, f"channel=room&token={mint(SECRET, 'ann')}")
        first.next("subscribed")
        second = SSE(server.port, f"channel=room&token={mint(SECRET, 'bob')}")
        second.next("subscribed")
        join = json.loads(first.next("join")["data"])
        assert join["push"] == "join" and join["info"]["user"] == "bob"
        presence = server.call(app.hub.presence, "room")
        assert sorted(c["user"] for c in presence["clients"].values()) == ["ann", "bob"]
        second.close()
        leave = json.loads(first.next("leave")["data"])
        assert leave["info"]["user"] == "bob"
        first.close()
        wait_for(lambda: app.hub.channels() == {} and app.hub.users == {})


def test_presence_get() -> None:
    app = App(channels=ChannelSettings(token_secret=SECRET))
    app.channel("room", presence=True)
    app.channel("vip:*", presence=True, token=True)
    app.channel("plain")
    seen: list[str] = []

    def only_open(ctx: ChannelContext) -> None:
        seen.append(ctx.channel)
        if ctx.params["name"] == "closed":
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "closed")

    app.channel("door:{name}", presence=True, on_subscribe=only_open)
    with ThreadedServer(app) as server:
        port = server.port
        stream = SSE(port, f"channel=room&token={mint(SECRET, 'ann', info={'n': 1})}")
        stream.next("subscribed")
        other = SSE(port, f"channel=room&token={mint(SECRET, 'ann')}")
        other.next("subscribed")
        third = SSE(port, f"channel=room&token={mint(SECRET, 'bob')}")
        third.next("subscribed")
        wait_for(lambda: server.call(app.hub.presence_stats, "room")["clients"] == 3)
        status, body, _ = get(port, "/rt/presence?channel=room")
        assert status == 200
        assert sorted(c["user"] for c in body["clients"].values()) == ["ann", "ann", "bob"]
        assert body == server.call(app.hub.presence, "room")
        status, body, _ = get(port, "/rt/presence?channel=room&stats=1")
        assert status == 200 and body == {"clients": 3, "users": 2}
        status, body, _ = get(port, "/rt/presence?channel=room&stats=maybe")
        assert status == 400 and body["error"]["code"] == ErrorCode.BAD_REQUEST
        for stream_ in (stream, other, third):
            stream_.close()
        wait_for(lambda: server.call(app.hub.presence_stats, "room")["clients"] == 0)
        status, body, _ = get(port, "/rt/presence?channel=room")
        assert status == 200 and body == {"clients": {}}
        # the permissions of a subscribe
        status, body, _ = get(port, "/rt/presence?channel=vip:a")
        assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED
        status, body, _ = get(port, f"/rt/presence?channel=vip:a&token={mint(SECRET, 'ann')}")
        assert status == 403
        allowed = mint(SECRET, "ann", channels=["vip:*"])
        status, body, _ = get(port, f"/rt/presence?channel=vip:a&token={allowed}&stats=1")
        assert status == 200 and body == {"clients": 0, "users": 0}
        status, body, _ = get(port, "/rt/presence?channel=room&token=garbage")
        assert status == 401 and body["error"]["code"] == ErrorCode.UNAUTHORIZED
        status, body, _ = get(port, "/rt/presence?channel=door:closed")
        assert status == 403 and body["error"]["message"] == "closed"
        status, body, _ = get(port, "/rt/presence?channel=door:open&stats=1")
        assert status == 200 and body == {"clients": 0, "users": 0}
        assert seen == ["door:closed", "door:open"]
        status, body, _ = get(port, "/rt/presence?channel=nope")
        assert status == 404 and body["error"]["code"] == ErrorCode.UNKNOWN_CHANNEL
        status, body, _ = get(port, "/rt/presence?channel=room&channel=plain")
        assert status == 400 and body["error"]["code"] == ErrorCode.BAD_REQUEST
        # a channel without presence: 108, as the WebSocket answers
        for query in ("channel=plain", "channel=plain&stats=1"):
            status, body, _ = get(port, f"/rt/presence?{query}")
            assert status == 503 and body["error"]["code"] == ErrorCode.NOT_AVAILABLE


def test_connect_data_over_http() -> None:
    """`data=<JSON>` reaches on_connect over SSE, poll, history, presence and client publish."""
    app = make_app()
    app.channel("lobby", history=10, presence=True, publish="clients")
    given: list[Any] = []

    @app.on_connect
    def name_required(ctx: ConnectContext) -> ConnectResult:
        given.append(ctx.data)
        if not isinstance(ctx.data, dict) or not isinstance(ctx.data.get("name"), str):
            raise ChannelError(ErrorCode.UNAUTHORIZED, "say your name")
        return ConnectResult(user=ctx.data["name"])

    def data(value: Any) -> str:
        return urllib.parse.urlencode({"data": json.dumps(value)})

    with ThreadedServer(app) as server:
        port = server.port
        stream = SSE(port, f"channel=lobby&{data({'name': 'ann'})}")
        assert stream.response.status == 200
        stream.next("subscribed")
        assert given == [{"name": "ann"}]
        status, body, _ = get(port, f"/rt/presence?channel=lobby&{data({'name': 'bob'})}")
        assert status == 200 and [c["user"] for c in body["clients"].values()] == ["ann"]
        status, body, _ = get(port, f"/rt/poll?channel=lobby&timeout=0&{data({'name': 'cy'})}")
        assert status == 200 and body["channels"]["lobby"]["offset"] == 0
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/rt/client/publish?{data({'name': 'dee'})}",
            data=json.dumps({"channel": "lobby", "data": "hi"}).encode(),
            method="POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["offset"] == 1
        pub = json.loads(stream.next()["data"])
        assert pub["data"] == "hi" and pub["info"]["user"] == "dee"
        status, body, _ = get(port, f"/rt/history?channel=lobby&{data({'name': 'eve'})}")
        assert status == 200 and body["publications"][0]["info"]["user"] == "dee"
        assert given[1:] == [{"name": n} for n in ("bob", "cy", "dee", "eve")]
        stream.close()
        # without data, on_connect refuses; data that is not JSON is a 400 before it runs
        del given[:]
        status, body, _ = get(port, "/rt/poll?channel=lobby&timeout=0")
        assert status == 401 and body["error"]["message"] == "say your name"
        for path in ("sse", "poll", "history", "presence"):
            status, body, _ = get(port, f"/rt/{path}?channel=lobby&data=%7Bname")
            assert status == 400 and body["error"]["code"] == ErrorCode.BAD_REQUEST, path
            assert body["error"]["message"] == "data is not JSON"
        status, body, _ = post(port, {"channel": "lobby", "data": 1}, None)
        assert status == 401
        assert given == [None, None]
        wait_for(lambda: app.hub.channels() == {} and app.hub.users == {})


def test_history_and_presence_refusals_name_the_channel_as_the_streams_do() -> None:
    """A channel's refusal (102, 103, on_subscribe) names it on every HTTP transport; the
    connection's (a bad token) names none."""
    app = make_app()
    app.channel("room", history=10, presence=True)

    def shut(ctx: ChannelContext) -> None:
        raise ChannelError(1003, "shut")

    app.channel("shut:*", history=10, presence=True, on_subscribe=shut)
    cases = [("nope", 404, 102), ("secret:x", 403, 103), ("shut:x", 400, 1003)]
    with ThreadedServer(app) as server:
        port = server.port
        for path in ("/rt/history", "/rt/presence", "/rt/poll", "/rt/sse"):
            for channel, status, code in cases:
                got, body, _ = get(port, f"{path}?channel={channel}&timeout=0")
                assert (got, body["error"]["code"]) == (status, code), (path, body)
                assert body["error"].get("channel") == channel, (path, body)
            got, body, _ = get(port, f"{path}?channel=room&token=garbage")
            assert got == 401 and "channel" not in body["error"], (path, body)


def test_idempotency_keys_are_checked_alike_on_every_http_publish() -> None:
    """1 to 256 characters, as over the WebSocket: the client publish, the publish API (body
    and header) and its batch refuse an empty, a too long and a null key with 107."""
    app = make_app(api_key="k" * 20)
    api_key = {"authorization": "Bearer " + "k" * 20}

    def publish_api(body: Any, path: str = "", headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/rt/publish{path}",
            data=json.dumps(body).encode(),
            headers={**api_key, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    bad_keys: list[Any] = ["", "x" * 257, None]
    with ThreadedServer(app) as server:
        for key in bad_keys:
            body = {"channel": "chat:a", "data": 1, "idempotency_key": key}
            status, answer, _ = post(server.port, body)
            assert (status, answer["error"]["code"]) == (400, 107), (key, answer)
            status, answer = publish_api(body)
            assert (status, answer["error"]["code"]) == (400, 107), (key, answer)
            status, answer = publish_api({"publications": [body]}, "/batch")
            assert status == 200 and answer["results"][0]["error"]["code"] == 107, answer
        status, answer = publish_api(
            {"channel": "news", "data": 1}, headers={"idempotency-key": "x" * 257}
        )
        assert (status, answer["error"]["code"]) == (400, 107), answer
        longest = {"channel": "news", "data": 1, "idempotency_key": "x" * 256}
        assert publish_api(longest)[0] == 200
        assert publish_api(longest)[1]["offset"] == 1  # the repeat is the same publication


def named_by_client_app() -> App:
    """A chat whose users are whatever name a client sends (as the chat template)."""
    app = make_app()
    app.channel("slow:*", publish="clients", publish_rate=0.01, publish_burst=2)

    @app.on_connect
    def named(ctx: ConnectContext) -> ConnectResult:
        name = ctx.data.get("name") if isinstance(ctx.data, dict) else None
        return ConnectResult(user=name if isinstance(name, str) else None)

    return app


def post_as(port: int, name: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    query = urllib.parse.urlencode({"data": json.dumps({"name": name})})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/rt/client/publish?{query}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_client_publish_rate_of_self_named_clients_is_per_address() -> None:
    """A name a client picks does not buy it a rate bucket of its own (issue 16: 200 posts
    under 200 names were all accepted): without a token, the bucket is the address's. A
    token's user keeps its own."""
    app = named_by_client_app()
    with ThreadedServer(app) as server:
        statuses = [
            post_as(server.port, f"name-{i}", {"channel": "slow:r", "data": i})[0]
            for i in range(10)
        ]
        assert statuses[:2] == [200, 200] and set(statuses[2:]) == {429}  # burst 2
        for user in ("ann", "bob"):
            token = mint(SECRET, user=user)
            status, _ = post_as(server.port, user, {"channel": "slow:r", "data": user}, token)
            assert status == 200, user


def test_client_publish_idempotency_keys_are_the_publishers_own() -> None:
    """Over HTTP a key is scoped to the token's user, or without a token to the address and
    the name given: another name's publish with the same key lands (issue 16)."""
    app = named_by_client_app()
    app.channel("room", history=10, publish="clients")
    with ThreadedServer(app) as server:
        port = server.port
        body = {"channel": "room", "data": "x", "idempotency_key": "msg-1"}
        first = post_as(port, "dee", body)
        assert first == (200, {"offset": 1, "epoch": first[1]["epoch"]})
        assert post_as(port, "dee", body) == first  # a retry
        assert post_as(port, "eve", body)[1]["offset"] == 2
        token = mint(SECRET, user="fay")
        assert post_as(port, "fay", body, token)[1]["offset"] == 3
        assert post_as(port, "fay", body, token)[1]["offset"] == 3  # the token's user again


def test_sse_publications_past_the_preamble_follow_the_channel_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While a later channel is being subscribed, publications of an earlier one wait in the
    # preamble; past its bound the channel's slow_consumer policy applies, as on a full
    # connection (was: a disconnect whatever the policy).
    from rtserve.realtime import sse

    monkeypatch.setattr(sse, "MAX_PREAMBLE", 3)
    entered, gate = threading.Event(), threading.Event()

    async def wait_for_gate(ctx: ChannelContext) -> None:
        entered.set()  # `backlog` is subscribed by now
        await asyncio.to_thread(gate.wait, 10)

    app = App(channels=ChannelSettings())
    app.channel("backlog", slow_consumer="drop_oldest", max_pending=2)
    app.channel("gate", on_subscribe=wait_for_gate)
    with ThreadedServer(app) as server:
        opened: list[SSE] = []
        opener = threading.Thread(
            target=lambda: opened.append(SSE(server.port, "channel=backlog&channel=gate"))
        )
        opener.start()
        try:
            assert entered.wait(10)
            for i in range(1, 7):
                server.call(app.publish, "backlog", {"i": i})
            # the preamble holds `subscribed` and 1, 2; then 5 and 6 are held, 3 and 4 dropped
            wait_for(lambda: app.hub.stats.dropped == 2)
        finally:
            gate.set()
            opener.join(10)
        stream = opened[0]
        assert stream.next("subscribed")["id"].startswith("backlog:")
        seen = [json.loads(stream.next("pub")["data"])["data"]["i"] for _ in range(2)]
        assert stream.next("subscribed")["id"].startswith("gate:")
        seen += [json.loads(stream.next("pub")["data"])["data"]["i"] for _ in range(2)]
        assert seen == [1, 2, 5, 6]
        assert app.hub.stats.slow_disconnected == 0
        stream.close()
        wait_for(lambda: app.hub.channels() == {})


class _Loopback:
    """What SSEStream.deliver reaches of the server, recording each write to the socket."""

    closed = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.writes: list[bytes] = []
        self.state = self
        self.loop = loop

    def buffered(self) -> int:  # the exchange's: nothing waits in the transport
        return 0

    def schedule_flush(self, stream: Any, delay: float = 0.0) -> None:
        self.loop.call_soon(stream.flush)  # as ServerState's: at the end of this loop tick

    def write(self, data: bytes) -> None:  # the exchange's
        self.writes.append(data)


def test_sse_publications_of_one_loop_tick_go_out_in_one_write() -> None:
    """A fan-out of several publications at once costs each stream one system call, as
    /rt/ws's does, not one per publication (bench/sse.py: 18 µs against 2.5 per delivery)."""
    from rtserve.realtime import sse, sse_shared
    from rtserve.realtime.hub import HubStats
    from rtserve.realtime.outbound import Outbound
    from rtserve.realtime.outbox import Outbox
    from rtserve.realtime.rules import ChannelRule

    loop = asyncio.new_event_loop()
    conn = _Loopback(loop)
    stream: Any = sse.SSEStream.__new__(sse.SSEStream)
    stream.exchange, stream.ended, stream._preamble, stream._limit = conn, False, None, 1 << 20
    stream._running, stream._drain, stream._retry, stream._out, stream._out_bytes = (
        True,
        None,
        None,
        None,
        0,
    )
    stream.direct_after, stream.shared, stream.wire = sse_shared.BLOCKED, None, None
    stream._outbox = Outbox(stream._offer, sse._EVENT, HubStats())
    rule = ChannelRule("c")
    events = []
    for offset in (1, 2, 3):
        message = Outbound(b'{"push":"pub","offset":%d}' % offset, offset, channel="c")
        message.epoch = "e"
        events.append(message.sse)
        stream.deliver("c", message, rule)
    try:
        loop.run_until_complete(asyncio.sleep(0))  # the end of the tick
    finally:
        loop.close()
    assert conn.writes == [b"".join(events)]


def raw_poll(port: int, query: str) -> bytes:
    """The body of one poll, as the bytes the server sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", f"/rt/poll?{query}")
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def test_one_publication_answers_every_pending_poll_in_its_own_pass() -> None:
    app = make_app()
    left_after_delivery: list[int] = []
    deliver = app.hub.on_publication

    def on_publication(channel: str, publication: Any, epoch: str) -> None:
        deliver(channel, publication, epoch)
        left_after_delivery.append(app.hub.subscriber_count("news"))

    app.hub.on_publication = on_publication  # type: ignore[method-assign]
    with ThreadedServer(app) as server:
        bodies: list[bytes] = []
        lock = threading.Lock()

        def poll() -> None:
            body = raw_poll(server.port, "channel=news&timeout=20")
            with lock:
                bodies.append(body)

        threads = [threading.Thread(target=poll) for _ in range(20)]
        for thread in threads:
            thread.start()
        wait_for(lambda: app.hub.stats.subscriptions == 20, 10)
        server.call(app.publish, "news", "all at once")
        for thread in threads:
            thread.join(10)
        # Answered (and gone from the channel) while the publication was delivered, not
        # one Task step per poll later.
        assert left_after_delivery == [0]
        assert len(bodies) == 20 and len(set(bodies)) == 1
        answer = json.loads(bodies[0])["channels"]["news"]
        assert [p["data"] for p in answer["publications"]] == ["all at once"]


def test_polls_at_one_position_share_an_answer_and_an_older_one_gets_its_own() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        port = server.port
        for i in range(2):
            server.call(app.publish, "news", i)
        epoch = json.loads(raw_poll(port, "channel=news&timeout=0"))["channels"]["news"]["epoch"]
        bodies: list[bytes] = []
        lock = threading.Lock()

        def poll(query: str) -> None:
            body = raw_poll(port, query)
            with lock:
                bodies.append(body)

        waiting = [
            threading.Thread(target=poll, args=(f"channel=news&since=news:2:{epoch}&timeout=20",)),
            threading.Thread(target=poll, args=("channel=news&timeout=20",)),
        ]
        subscribed = app.hub.stats.subscriptions  # counted once the subscribe is complete
        for thread in waiting:
            thread.start()
        wait_for(lambda: app.hub.stats.subscriptions == subscribed + 2, 10)
        server.call(app.publish, "news", {"n": 2})
        for thread in waiting:
            thread.join(10)
        assert len(bodies) == 2 and bodies[0] == bodies[1]
        shared = json.loads(bodies[0])["channels"]["news"]
        assert shared == {
            "publications": [{"offset": 3, "data": {"n": 2}}],
            "offset": 3,
            "epoch": epoch,
            "recovered": True,
        }
        # A poll from an older position gets exactly what it missed, and from the newest
        # one position back, the same bytes as those released by the publication.
        older = json.loads(raw_poll(port, f"channel=news&since=news:0:{epoch}&timeout=5"))
        assert [p["data"] for p in older["channels"]["news"]["publications"]] == [0, 1, {"n": 2}]
        assert older["channels"]["news"]["offset"] == 3
        assert raw_poll(port, f"channel=news&since=news:2:{epoch}&timeout=5") == bodies[0]
        # Two channels, one of them released: each has its own position.
        both: list[bytes] = []
        thread = threading.Thread(
            target=lambda: both.append(
                raw_poll(port, f"channel=news&since=news:3:{epoch}&channel=chat:z&timeout=20")
            )
        )
        subscribed = app.hub.stats.subscriptions
        thread.start()
        wait_for(lambda: app.hub.stats.subscriptions == subscribed + 2, 10)
        server.call(app.publish, "chat:z", "z")
        thread.join(10)
        channels = json.loads(both[0])["channels"]
        assert channels["news"]["publications"] == [] and channels["news"]["offset"] == 3
        assert [p["data"] for p in channels["chat:z"]["publications"]] == ["z"]
