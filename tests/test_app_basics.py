"""End-to-end behaviour of the app layer over real sockets, with http.client as the client."""

from __future__ import annotations

import asyncio

import pytest

from rtserve import App, Handler, HTTPError, JSONResponse, Response
from rtserve.testing import ThreadedServer


def make_app() -> App:
    app = App()

    @app.route("/")
    def index(request):  # type: ignore[no-untyped-def]
        return "Hello, World!"

    @app.route("/items/{id:int}", name="item")
    def item(request, id):  # type: ignore[no-untyped-def]
        return {"id": id, "q": request.query.getall("q")}

    @app.route("/search")
    def search(request):  # type: ignore[no-untyped-def]
        return {"q": request.query["q"]}  # required: missing answers 400 by itself

    @app.route("/signup", methods=["POST"])
    async def signup(request):  # type: ignore[no-untyped-def]
        form = await request.form()
        return {"name": form["name"]}

    @app.route("/rooms/{room}")
    async def room(request, room):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return {"room": room}

    @app.route("/echo", methods=["POST", "PUT"])
    async def echo(request):  # type: ignore[no-untyped-def]
        return {"method": request.method, "json": await request.json()}

    @app.route("/fail")
    def fail(request):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    @app.route("/teapot")
    def teapot(request):  # type: ignore[no-untyped-def]
        raise HTTPError(418, "short and stout")

    @app.route("/cookie")
    def cookie(request):  # type: ignore[no-untyped-def]
        response = Response("set")
        response.set_cookie("a", "b c")
        return response

    @app.route("/nothing")
    def nothing(request):  # type: ignore[no-untyped-def]
        return None

    @app.route("/class/{name}")
    class Greeter(Handler):
        def prepare(self) -> None:
            self.request.state["prepared"] = True

        def get(self, name: str) -> None:
            self.write({"hello": name, "prepared": self.request.state["prepared"]})

        async def post(self, name: str) -> JSONResponse:
            return JSONResponse({"posted": name}, status=201)

    return app


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    with ThreadedServer(make_app(), access_log=False) as srv:
        yield srv


def test_plain_text(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/")
        assert r.status == 200
        assert r.text == "Hello, World!"
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["content-length"] == "13"
        assert "date" in r.headers


def test_path_params_and_query(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/items/42?q=a&q=b")
        assert r.json() == {"id": 42, "q": ["a", "b"]}
        assert c.get("/items/abc").status == 404
        assert c.get("/rooms/lobby").json() == {"room": "lobby"}


def test_a_missing_required_argument_answers_400(server: ThreadedServer) -> None:
    """`request.query[name]` and `form[name]` without it: 400 naming it, not a 500."""
    with server.client() as c:
        assert c.get("/search?q=rt").json() == {"q": "rt"}
        missing = c.get("/search?x=1", headers={"Accept": "application/json"})
        assert missing.status == 400
        assert "missing query parameter 'q'" in missing.text
        form = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "text/plain"}
        assert c.post("/signup", body="name=ann", headers=form).json() == {"name": "ann"}
        missing = c.post("/signup", body="nom=ann", headers=form)
        assert missing.status == 400 and "missing form field 'name'" in missing.text


def test_post_json_and_405(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.post("/echo", json={"x": 1})
        assert r.json() == {"method": "POST", "json": {"x": 1}}
        bad = c.post("/echo", body="{nope", headers={"Content-Type": "application/json"})
        assert bad.status == 400
        r = c.request("DELETE", "/echo")
        assert r.status == 405
        assert r.headers["allow"] == "POST, PUT"


def test_errors_json_and_html(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/fail")
        assert r.status == 500
        assert r.json()["error"]["status"] == 500
        assert "boom" not in r.text  # tracebacks only in debug mode
        r = c.get("/teapot", headers={"Accept": "text/html"})
        assert r.status == 418
        assert "short and stout" in r.text and r.text.startswith("<!doctype html>")
        assert c.get("/").status == 200  # the connection is still good


def test_head_and_none(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.request("HEAD", "/items/1")
        assert r.status == 200 and r.body == b""
        assert int(r.headers["content-length"]) > 0
        assert c.get("/nothing").status == 204


def test_cookie_defaults(server: ThreadedServer) -> None:
    with server.client() as c:
        r = c.get("/cookie")
        value = r.headers["set-cookie"]
        assert value.startswith("a=b%20c;")
        assert "HttpOnly" in value and "SameSite=Lax" in value
        assert "Secure" not in value  # plain HTTP: Secure would make the browser drop it


def test_class_handler(server: ThreadedServer) -> None:
    with server.client() as c:
        assert c.get("/class/ada").json() == {"hello": "ada", "prepared": True}
        r = c.post("/class/bob")
        assert r.status == 201 and r.json() == {"posted": "bob"}


def test_url_for() -> None:
    app = make_app()
    assert app.url_for("item", id=7) == "/items/7"
