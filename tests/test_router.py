"""The router on its own: patterns, converters, 404/405, HEAD, names and conflicts."""

from __future__ import annotations

import uuid

import pytest

from rtserve import App
from rtserve.app.router import Router, parse_pattern
from rtserve.app.websocket import WebSocketRoute
from rtserve.errors import HTTPError, RouteError
from rtserve.server.settings import ServerSettings


def router_with(*routes: tuple[str, list[str], str]) -> Router:
    router = Router()
    for pattern, methods, name in routes:
        router.add(pattern, methods, name, name=name)
    return router


def test_literal_and_parameters() -> None:
    r = router_with(
        ("/", ["GET"], "root"),
        ("/rooms", ["GET"], "rooms"),
        ("/rooms/{room}", ["GET"], "room"),
        ("/rooms/{room}/messages/{id:int}", ["GET"], "message"),
        ("/rooms/special", ["GET"], "special"),
        ("/files/{rest:path}", ["GET"], "files"),
        ("/keys/{key:uuid}", ["GET"], "key"),
    )
    assert r.match("GET", "/")[0].handler == "root"
    assert r.match("GET", "/rooms/special")[0].handler == "special"  # literal wins
    endpoint, params = r.match("GET", "/rooms/lobby")
    assert endpoint.handler == "room" and params == {"room": "lobby"}
    endpoint, params = r.match("GET", "/rooms/a/messages/12")
    assert endpoint.handler == "message" and params == {"room": "a", "id": 12}
    assert r.match("GET", "/files/a/b/c.txt")[1] == {"rest": "a/b/c.txt"}
    key = uuid.uuid4()
    assert r.match("GET", f"/keys/{key}")[1] == {"key": key}
    for missing in ("/rooms/a/messages/x", "/keys/nope", "/nothing", "/rooms/", "/rooms/a/b"):
        with pytest.raises(HTTPError) as info:
            r.match("GET", missing)
        assert info.value.status == 404, missing


def test_int_before_str_at_the_same_place() -> None:
    r = router_with(("/u/{name}", ["GET"], "by_name"), ("/u/{id:int}", ["GET"], "by_id"))
    endpoint, params = r.match("GET", "/u/42")
    assert endpoint.handler == "by_id" and params == {"id": 42}
    assert r.match("GET", "/u/ada")[0].handler == "by_name"


def test_backtracking_to_a_parameter() -> None:
    r = router_with(("/a/b/c", ["GET"], "abc"), ("/a/{x}/d", ["GET"], "axd"))
    endpoint, params = r.match("GET", "/a/b/d")
    assert endpoint.handler == "axd" and params == {"x": "b"}


def test_encoded_slash_stays_in_one_segment() -> None:
    r = router_with(("/rooms/{room}", ["GET"], "room"), ("/lit/a/b", ["GET"], "lit"))
    assert r.match("GET", "/rooms/a/b", b"/rooms/a%2Fb")[1] == {"room": "a/b"}
    with pytest.raises(HTTPError):
        r.match("GET", "/lit/a/b", b"/lit/a%2fb")
    assert r.match("GET", "/lit/a/b", b"/lit/%61/b")[0].handler == "lit"


def test_405_with_allow_and_automatic_head() -> None:
    r = Router()
    r.add("/x/{id:int}", ["GET"], "get")
    r.add("/x/{key:int}", ["DELETE"], "delete")
    with pytest.raises(HTTPError) as info:
        r.match("POST", "/x/1")
    assert info.value.status == 405
    assert info.value.headers["Allow"] == "DELETE, GET, HEAD"
    assert r.match("HEAD", "/x/1")[0].handler == "get"
    # Each method binds its own parameter names.
    assert r.match("DELETE", "/x/5")[1] == {"key": 5}


def test_url_for() -> None:
    r = router_with(
        ("/rooms/{room}/messages/{id:int}", ["GET"], "message"),
        ("/files/{rest:path}", ["GET"], "files"),
    )
    assert r.url_for("message", room="a b", id=3) == "/rooms/a%20b/messages/3"
    assert r.url_for("files", rest="x/y z") == "/files/x/y%20z"
    with pytest.raises(RouteError):
        r.url_for("message", room="a", id="x")
    with pytest.raises(RouteError):
        r.url_for("message", room="a")
    with pytest.raises(RouteError):
        r.url_for("nope")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/a/{x}", "/a/{y}"),
        ("/a/{x:int}/b", "/a/{y:int}/b"),
        ("/a", "/a"),
        ("/f/{p:path}", "/f/{q:path}"),
    ],
)
def test_conflicts_are_refused_at_startup(first: str, second: str) -> None:
    r = Router()
    r.add(first, ["GET"], "one")
    with pytest.raises(RouteError, match="conflicts"):
        r.add(second, ["GET"], "two")
    r.add(second, ["POST"], "post is fine")


@pytest.mark.parametrize(
    "bad", ["nope", "/a/{", "/a/{x:float}", "/a/{p:path}/b", "/a/{x}/{x}", "/a/b{x}", "/{1x}"]
)
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(RouteError):
        parse_pattern(bad)


def test_duplicate_names_refused() -> None:
    r = Router()
    r.add("/a", ["GET"], "a", name="same")
    with pytest.raises(RouteError):
        r.add("/b", ["GET"], "b", name="same")


def test_many_routes_match_correctly() -> None:
    r = Router()
    for i in range(5000):
        r.add(f"/api/v{i % 7}/things{i}/{{id:int}}", ["GET"], i)
        r.add(f"/static{i}", ["GET"], -i)
    endpoint, params = r.match("GET", f"/api/v{4999 % 7}/things4999/12")
    assert endpoint.handler == 4999 and params == {"id": 12}
    assert r.match("GET", "/static4321")[0].handler == -4321


def test_endpoint_flags_are_typed_fields() -> None:
    """The flags of a route are Endpoint's fields; a misspelled one is refused at startup
    instead of being kept in a bag nobody reads."""
    r = Router()
    r.add("/upload", ["POST"], "upload", stream=True, xsrf_exempt=True)
    r.add("/ws", ["GET"], "ws", websocket=WebSocketRoute({"concurrent": False}, ["chat"]))
    upload = r.match("POST", "/upload")[0]
    assert (upload.stream, upload.xsrf_exempt, upload.is_websocket) == (True, True, False)
    ws = r.match("GET", "/ws")[0]
    assert ws.is_websocket and ws.websocket is not None and not ws.stream
    assert (ws.websocket.overrides, ws.websocket.subprotocols) == ({"concurrent": False}, ("chat",))
    with pytest.raises(TypeError, match="xsrf_exmpt"):
        r.add("/typo", ["POST"], "typo", xsrf_exmpt=True)  # type: ignore[call-arg]


def test_websocket_route_options_are_checked_when_routed() -> None:
    """An unknown option, or subprotocols given as one string (whose letters would have been
    taken for names), is a TypeError at startup."""
    app = App()
    with pytest.raises(TypeError, match="max_mesage_size"):
        app.websocket("/a", max_mesage_size=10)
    with pytest.raises(TypeError, match="list of names"):
        app.websocket("/b", subprotocols="chat")
    route = WebSocketRoute({"max_message_size": 10}, ["chat"])
    base = ServerSettings().websocket
    assert route.settings(base).max_message_size == 10
    assert route.settings(base) is route.settings(base)  # resolved once per base
    assert route.deflate_config(base).min_size == base.compression_min_size
