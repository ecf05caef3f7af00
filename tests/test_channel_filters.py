"""Publication tags and per-subscriber tag filters end to end, on every broker: each
subscriber gets exactly its matches, in order, live and recovered after a cut; bad filters and
tags are refused with their codes; a rule may forbid filters. /rt/ws through the independent
`websockets` package, SSE and long polling through stdlib HTTP clients."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from click.testing import CliRunner

from rtserve import App, ChannelSettings
from rtserve.cli.main import main
from rtserve.client import Client
from rtserve.realtime.protocol import ErrorCode
from rtserve.testing import ThreadedServer, serve_app
from tests.channel_peer import Peer, ReplyError
from tests.support.filters import reference_match
from tests.support.sse import SSE

pytestmark = pytest.mark.usefixtures("app_broker")

API_KEY = "k" * 20
REGIONS = ("eu", "us", "ap")
SYMBOLS = ("A", "B", "C", "D")
FILTERS: dict[str, Any] = {
    "eu": {"eq": ["region", "eu"]},
    "ab": {"in": ["symbol", ["A", "B"]]},
    "eu_or_c": {"or": [{"eq": ["region", "eu"]}, {"eq": ["symbol", "C"]}]},
    "not_us_a": {"and": [{"not": {"eq": ["region", "us"]}}, {"eq": ["symbol", "A"]}]},
}


MATCHES_ALL = {"region": "eu", "symbol": "A"}


def make_app() -> App:
    app = App(channels=ChannelSettings(api_key=API_KEY))
    app.channel("ticks", history=200, publish="clients")
    app.channel("plain", history=10, filters=False)
    app.channel("small", history=10, filter_max_size=40)
    app.channel("few", history=10, max_filters=2)
    return app


def tags_of(i: int) -> dict[str, str]:
    return {"region": REGIONS[i % 3], "symbol": SYMBOLS[i % 4]}


def expected(name: str, offsets: range) -> list[int]:
    """The offsets filter `name` lets through: publication `offset` has tags_of(offset)."""
    tree = FILTERS[name]
    return [o for o in offsets if reference_match(tree, tags_of(o))]


def run(app: App, scenario: Callable[[Any, str], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serve_app(app) as server:
            await asyncio.wait_for(scenario(server, f"ws://127.0.0.1:{server.port}/rt/ws"), 30)

    asyncio.run(main())


async def publish_tagged(app: App, first: int, last: int) -> None:
    """Publications `first`..`last` (their data the offset they get) tagged by tags_of."""
    for i in range(first, last + 1):
        position = await app.publish("ticks", i, tags=tags_of(i))
        assert position.offset == i


async def all_pubs_until(peer: Peer, last: int) -> list[dict[str, Any]]:
    """The `pub` pushes up to the one with offset `last` (which a marker publication makes)."""
    got: list[dict[str, Any]] = []
    while True:
        pub = await peer.next_push("pub")
        if pub["offset"] == last:
            return got
        got.append(pub)


def test_each_subscriber_gets_exactly_its_matches_in_order_and_recovers_after_a_cut() -> None:
    app = make_app()

    async def scenario(server: Any, url: str) -> None:
        peers = {name: await Peer.open(url) for name in FILTERS}
        everyone = await Peer.open(url)
        epoch = ""
        for name, peer in peers.items():
            epoch = (await peer.call("subscribe", channel="ticks", filter=FILTERS[name]))["epoch"]
        await everyone.call("subscribe", channel="ticks")
        await publish_tagged(app, 1, 24)
        # the end marker (region eu, symbol A) matches every filter: all before it has arrived
        mark = await everyone.call("publish", channel="ticks", data=25, tags=MATCHES_ALL)
        assert mark["offset"] == 25
        for name, peer in peers.items():
            got = await all_pubs_until(peer, 25)
            assert [p["offset"] for p in got] == expected(name, range(1, 25)), name
            assert all(p["data"] == p["offset"] and p["tags"] == tags_of(p["offset"]) for p in got)
        unfiltered = await all_pubs_until(everyone, 25)
        assert [p["offset"] for p in unfiltered] == list(range(1, 25))

        # a cut: the `eu` subscriber drops after offset 25 and comes back with its position
        cut = peers["eu"]
        cut.ws.transport.abort()
        await publish_tagged(app, 26, 60)
        again = await Peer.open(url)
        result = await again.call(
            "subscribe",
            channel="ticks",
            filter=FILTERS["eu"],
            since={"offset": 25, "epoch": epoch},
        )
        assert result["recovered"] is True and result["offset"] == 60
        recovered = [p["offset"] for p in result["publications"]]
        assert recovered == expected("eu", range(26, 61))
        # the position a filtered client keeps is the last offset it saw: recovering from an
        # offset whose followers it was never sent is no gap
        last_seen = recovered[-1]
        await publish_tagged(app, 61, 64)
        later = await Peer.open(url)
        result = await later.call(
            "subscribe",
            channel="ticks",
            filter=FILTERS["eu"],
            since={"offset": last_seen, "epoch": epoch},
        )
        assert result["recovered"] is True
        assert [p["offset"] for p in result["publications"]] == expected(
            "eu", range(last_seen + 1, 65)
        )
        # live again, and `history` honours the filter too
        await publish_tagged(app, 65, 67)
        live = [await later.next_push("pub") for _ in expected("eu", range(65, 68))]
        assert [p["offset"] for p in live] == expected("eu", range(65, 68))
        history = await later.call(
            "history", channel="ticks", since={"offset": 50, "epoch": epoch}, limit=100
        )
        assert [p["offset"] for p in history["publications"]] == expected("eu", range(51, 68))
        back = await later.call("history", channel="ticks", reverse=True, limit=9)
        assert [p["offset"] for p in back["publications"]] == expected("eu", range(67, 58, -1))
        await later.call("ping")
        assert not [p for p in later.pushes if p["push"] == "pub"]  # nothing unmatched, no repeat

    run(app, scenario)


def test_identical_filters_share_a_group_and_connect_subscriptions_take_filters() -> None:
    app = make_app()

    async def scenario(server: Any, url: str) -> None:
        one = await Peer.open(url)
        reordered = {"or": [{"eq": ["symbol", "C"]}, {"eq": ["region", "eu"]}]}
        two = await Peer.open(
            url,
            protocol=2,
            subscriptions=[{"channel": "ticks", "filter": reordered}],
        )
        assert "error" not in two.info["subscriptions"]["ticks"]
        await one.call("subscribe", channel="ticks", filter=FILTERS["eu_or_c"])
        assert len(app.hub._local["ticks"].groups) == 1  # one evaluation per publication
        await publish_tagged(app, 1, 12)
        for peer in (one, two):
            got = [await peer.next_push("pub") for _ in expected("eu_or_c", range(1, 13))]
            assert [p["offset"] for p in got] == expected("eu_or_c", range(1, 13))

    run(app, scenario)


def test_bad_filters_bad_tags_and_rules_are_refused_with_their_codes() -> None:
    app = make_app()

    async def scenario(server: Any, url: str) -> None:
        peer = await Peer.open(url)

        async def refused(code: int, op: str, **fields: Any) -> str:
            with pytest.raises(ReplyError) as info:
                await peer.call(op, **fields)
            assert info.value.code == code, info.value
            return info.value.message

        assert "unknown operator" in await refused(
            118, "subscribe", channel="ticks", filter={"regex": ["a", "."]}
        )
        deep: Any = {"eq": ["a", "b"]}
        for _ in range(20):
            deep = {"not": deep}
        assert "deeper" in await refused(118, "subscribe", channel="ticks", filter=deep)
        assert "no filters" in await refused(
            103, "subscribe", channel="plain", filter={"eq": ["a", "b"]}
        )
        assert "at most 40" in await refused(
            118,
            "subscribe",
            channel="small",
            filter={"in": ["region", ["eu", "us", "ap", "x", "y", "z"]]},
        )
        await peer.call("subscribe", channel="small", filter={"eq": ["region", "eu"]})
        await peer.call("subscribe", channel="plain", filter=None)  # null is no filter
        assert "a tag value is a string" in await refused(
            107, "publish", channel="ticks", data=1, tags={"region": 1}
        )
        assert "at most 32" in await refused(
            107, "publish", channel="ticks", data=1, tags={str(i): "x" for i in range(33)}
        )
        # a channel holds at most max_filters distinct filters: a third is refused, a known
        # one (or none) is still welcome, and a filter that left frees its place
        others = [await Peer.open(url) for _ in range(4)]
        await others[0].call("subscribe", channel="few", filter={"eq": ["region", "eu"]})
        await others[1].call("subscribe", channel="few", filter={"eq": ["region", "us"]})
        assert "2 distinct filters" in await refused(
            106, "subscribe", channel="few", filter={"eq": ["region", "ap"]}
        )
        await others[2].call("subscribe", channel="few", filter={"eq": ["region", "us"]})
        await others[3].call("subscribe", channel="few")
        await others[0].call("unsubscribe", channel="few")
        await peer.call("subscribe", channel="few", filter={"eq": ["region", "ap"]})
        with pytest.raises(Exception) as info:
            await app.publish("ticks", 1, tags={"region": ["eu"]})  # type: ignore[dict-item]
        assert getattr(info.value, "code", None) == ErrorCode.BAD_REQUEST
        assert app.hub.subscriber_count("ticks") == 0  # nothing was left behind

    run(app, scenario)


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post(port: int, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def q(value: Any) -> str:
    return urllib.parse.quote(json.dumps(value, separators=(",", ":")))


def test_sse_and_polling_take_a_filter_and_the_publish_api_takes_tags() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        port = server.port
        auth = {"authorization": f"Bearer {API_KEY}"}
        items = [{"channel": "ticks", "data": i, "tags": tags_of(i)} for i in range(1, 7)]
        status, body = _post(port, "/rt/publish/batch", {"publications": items}, auth)
        assert status == 200 and [r["offset"] for r in body["results"]] == list(range(1, 7))
        status, body = _post(port, "/rt/publish", {"channel": "ticks", "data": 0, "tags": []}, auth)
        assert status == 400 and body["error"]["code"] == ErrorCode.BAD_REQUEST

        status, body = _get(port, "/rt/poll?channel=ticks&timeout=0")
        epoch = body["channels"]["ticks"]["epoch"]
        status, body = _get(
            port, f"/rt/poll?channel=ticks&since=ticks:0:{epoch}&filter=ticks:{q(FILTERS['ab'])}"
        )
        answer = body["channels"]["ticks"]
        assert [p["offset"] for p in answer["publications"]] == expected("ab", range(1, 7))
        assert answer["offset"] == 6 and answer["recovered"] is True  # past the skipped ones

        stream = SSE(port, f"channel=ticks&since=ticks:0:{epoch}&filter=ticks:{q(FILTERS['eu'])}")
        try:
            stream.next("subscribed")
            first = [json.loads(stream.next()["data"]) for _ in expected("eu", range(1, 7))]
            assert [p["offset"] for p in first] == expected("eu", range(1, 7))
            for i in range(7, 13):
                status, _ = _post(
                    port, "/rt/publish", items[0] | {"data": i, "tags": tags_of(i)}, auth
                )
                assert status == 200
            events = [stream.next() for _ in expected("eu", range(7, 13))]
            assert [json.loads(e["data"])["offset"] for e in events] == expected("eu", range(7, 13))
            assert all(json.loads(e["data"])["tags"]["region"] == "eu" for e in events)
        finally:
            stream.close()

        status, body = _get(port, f"/rt/history?channel=ticks&filter=ticks:{q(FILTERS['ab'])}")
        assert [p["offset"] for p in body["publications"]] == expected("ab", range(1, 13))

        for query, code in (
            (f"channel=ticks&filter=ticks:{q({'eq': ['a']})}", 118),
            (f"channel=ticks&filter=other:{q(FILTERS['eu'])}", 107),
            ("channel=ticks&filter=ticks", 107),
            (f"channel=plain&filter=plain:{q(FILTERS['eu'])}", 103),
        ):
            status, body = _get(port, f"/rt/poll?{query}&timeout=0")
            assert status in (400, 403) and body["error"]["code"] == code, (query, body)
            status, body = _get(port, f"/rt/sse?{query}")
            assert body["error"]["code"] == code, (query, body)


def test_python_client_filters_publishes_tags_and_recovers_after_a_cut() -> None:
    """rtserve.client: a filtered subscription takes offset jumps as no gap, and a dropped
    connection recovers exactly the matches it missed, once each and in order."""
    app = make_app()

    async def main() -> None:
        async with serve_app(app) as server:
            url = f"ws://127.0.0.1:{server.port}/rt/ws"
            async with Client(url, backoff_min=0.01) as client:
                sub = await client.subscribe("ticks", filter=FILTERS["ab"])
                await publish_tagged(app, 1, 8)
                position = await client.publish("ticks", 9, tags=MATCHES_ALL)
                assert position.offset == 9
                got: list[Any] = []
                async for pub in sub:
                    got.append(pub)
                    if pub.offset == 9:
                        break
                assert [p.offset for p in got] == [*expected("ab", range(1, 9)), 9]
                assert got[-1].tags == MATCHES_ALL and got[0].tags == tags_of(got[0].offset)
                assert client._ws is not None
                client._ws.abort()  # cut off: no close handshake
                await publish_tagged(app, 10, 30)
                await app.publish("ticks", 31, tags=MATCHES_ALL)
                after: list[int] = []
                async for pub in sub:
                    after.append(pub.offset)
                    if pub.offset == 31:
                        break
                assert after == [*expected("ab", range(10, 31)), 31]
                assert sub.gaps == 0 and sub.duplicates == 0 and sub.skipped == 0
                for _ in range(200):  # counted once the resubscribing is all done
                    if client.reconnects:
                        break
                    await asyncio.sleep(0.01)
                assert client.reconnects == 1 and sub.recovered is True
                # subscribed twice (at first, after the cut): no jump made it subscribe again
                assert app.hub.stats.subscriptions == 2

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.memory_only("the CLI's options; the brokers are tested above")
def test_cli_publishes_tags_and_subscribes_with_a_filter() -> None:
    app = make_app()
    with ThreadedServer(app) as server:
        runner = CliRunner()
        common = ["--url", server.url]
        for i in range(1, 7):
            tags = [f"--tag=region={REGIONS[i % 3]}", f"--tag=symbol={SYMBOLS[i % 4]}"]
            args = ["publish", "ticks", str(i), *tags, *common, "--api-key", API_KEY]
            result = runner.invoke(main, args)
            assert result.exit_code == 0, result.output
            assert json.loads(result.output)["offset"] == i
        result = runner.invoke(main, ["publish", "ticks", "1", "--tag", "region", *common])
        assert result.exit_code == 2 and "NAME=VALUE" in result.output
        epoch = server.call(app.hub.history, "ticks")["epoch"]
        wanted = expected("eu", range(1, 7))
        args = ["subscribe", "ticks", "--since", f"0:{epoch}", "--count", str(len(wanted))]
        result = runner.invoke(main, [*args, "--filter", json.dumps(FILTERS["eu"]), *common])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.output.splitlines()]
        assert [line["offset"] for line in lines] == wanted
        assert all(line["tags"] == tags_of(line["offset"]) for line in lines)
        result = runner.invoke(main, [*args, "--filter", "{nope", *common])
        assert result.exit_code == 2 and "not JSON" in result.output
