"""The notification service end to end: the login, tokens for the logged-in user only, send.py
(run as a separate program, on the standard library alone) reaching the right device, and
devices that were offline (a dropped network, a restart, a lost stream) catching up."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rtserve.client import Client, ClientError
from rtserve.testing import SyncClient, ThreadedServer
from rtserve.tokens import verify

HERE = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
TOKEN_SECRET = "test-token-secret-of-at-least-32-characters"
API_KEY = "test-api-key-of-the-notification-service"
COOKIE_SECRET = "test-cookie-secret-of-the-notification-service"


def load(name: str) -> ModuleType:
    """One of the example's modules, under a name of its own (projects share `app`)."""
    spec = importlib.util.spec_from_file_location(
        f"notification_service_{name}", HERE / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


service = load("app")
device = load("device")


def make_app(**options: Any) -> Any:
    """The app with the tests' own secrets (not the environment's) and the demo users."""
    settings: dict[str, Any] = {
        "token_secret": TOKEN_SECRET,
        "api_key": API_KEY,
        "cookie_secret": COOKIE_SECRET,
        "demo_users": True,
    }
    return service.create_app(**(settings | options))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def send(
    base_url: str, *args: str, api_key: str | None = API_KEY
) -> subprocess.CompletedProcess[str]:
    """Run send.py as another service would: its own process, `-I -S` (no site-packages, so
    no rtserve: the standard library only), the key in RTSERVE_API_KEY."""
    env = {"PATH": os.environ.get("PATH", "")}
    if api_key is not None:
        env["RTSERVE_API_KEY"] = api_key
    command = [sys.executable, "-I", "-S", str(HERE / "send.py"), *args, "--url", base_url]
    return subprocess.run(
        [*command, "--retries", "0", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


async def send_async(base_url: str, *args: str) -> dict[str, Any]:
    """send.py from a coroutine; its printed answer (it must succeed)."""
    done = await asyncio.to_thread(send, base_url, *args)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def login(http: SyncClient, user: str, password: str) -> str:
    """Log in over HTTP; the `session=...` cookie to send back."""
    answer = http.post("/api/login", json={"user": user, "password": password})
    assert answer.status == 200, answer.text
    return answer.headers["set-cookie"].split(";")[0]


class Screen:
    """What a device shows, line by line; `await shown(text)` waits for a line with `text`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def shown(self, text: str) -> str:
        while True:
            for line in self.lines:
                if text in line:
                    return line
            self._changed.clear()
            await self._changed.wait()


class Network:
    """A TCP relay between a device and the server that can go offline: `cut()` drops every
    connection at once (no close handshake) and refuses new ones until `restore()`."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.online = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Network:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.online:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.server_port)
        except OSError:
            writer.transport.abort()
            return
        self._links += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if not writer.is_closing():
            writer.close()

    def cut(self) -> None:
        self.online = False
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.online = True


def titles(dev: Any) -> list[str]:
    return [pub.data["title"] for pub in dev.received]


# --- the login and the tokens --------------------------------------------------------------


def test_login_takes_the_right_password_only() -> None:
    with ThreadedServer(make_app()) as server, server.client() as http:
        good = http.post("/api/login", json={"user": "alice", "password": "wonderland"})
        assert good.status == 200 and good.json() == {"user": "alice", "name": "Alice"}
        cookie = good.headers["set-cookie"]
        assert cookie.startswith("session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie

        wrong = http.post("/api/login", json={"user": "alice", "password": "wonderlan"})
        unknown = http.post("/api/login", json={"user": "mallory", "password": "wonderland"})
        for refused in (wrong, unknown):  # the same answer: no hint which users exist
            assert refused.status == 401 and "set-cookie" not in refused.headers
            assert refused.json()["error"]["detail"] == "wrong user or password"
        form = http.post(
            "/api/login",
            body="user=alice&password=wonderland",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status == 415  # JSON only: a form of another site cannot log anyone in

        session = cookie.split(";")[0]
        assert http.get("/api/me", headers={"Cookie": session}).json()["user"] == "alice"
        assert http.get("/api/me").status == 401


def test_a_token_is_minted_for_the_logged_in_user_only() -> None:
    with ThreadedServer(make_app()) as server, server.client() as http:
        assert http.post("/api/token").status == 401  # no session, no token

        alice = login(http, "alice", "wonderland")
        answer = http.post("/api/token?user=bob", headers={"Cookie": alice})  # asks for bob's
        assert answer.status == 200 and answer.headers["cache-control"] == "no-store"
        claims = verify(TOKEN_SECRET, answer.json()["token"])
        assert claims.user == "alice" and claims.channels == ("user:alice",)
        assert claims.expires is not None and 0 < claims.expires - time.time() <= service.TOKEN_TTL

        # A session cookie rewritten to say "bob" no longer carries a valid signature.
        name, value = alice.split("=", 1)
        parts = value.split(".")
        parts[2] = base64.urlsafe_b64encode(b"bob").decode().rstrip("=")
        forged = f"{name}={'.'.join(parts)}"
        assert http.post("/api/token", headers={"Cookie": forged}).status == 401


def test_bob_cannot_subscribe_to_alices_channel() -> None:
    with ThreadedServer(make_app()) as server:
        ws_url = device.websocket_url(server.url)
        bob = device.Account(server.url, "bob", "the-builder")
        bob.login()
        bob_token = bob.token()

        async def scenario() -> None:
            async with Client(ws_url, token=bob_token) as client:
                assert client.user == "bob"
                with pytest.raises(ClientError) as refused:
                    await client.subscribe("user:alice")
                assert refused.value.code == 103  # the token does not allow the channel
                await client.subscribe("user:bob")  # his own: allowed
            anonymous = Client(ws_url, reconnect=False)
            with pytest.raises(ClientError) as no_token:
                await anonymous.connect()
            assert no_token.value.code == 101  # require_token: every connection is a user
            await anonymous.close()

        run(scenario)


def test_a_wrong_password_stops_the_device(tmp_path: Path) -> None:
    with ThreadedServer(make_app()) as server:
        dev = device.Device(server.url, "alice", "not-hers", tmp_path / "a.json", show=Screen())
        with pytest.raises(device.LoginFailed, match="wrong user or password"):
            asyncio.run(asyncio.wait_for(dev.run(count=1), TIMEOUT))


# --- send.py and the devices ---------------------------------------------------------------


def test_send_reaches_alices_device_and_not_bobs(tmp_path: Path) -> None:
    with ThreadedServer(make_app()) as server:
        base = server.url
        screen = Screen()
        alice = device.Device(base, "alice", "wonderland", tmp_path / "alice.json", show=screen)
        bob = device.Device(base, "bob", "the-builder", tmp_path / "bob.json", show=Screen())

        async def scenario() -> None:
            ready = [asyncio.Event(), asyncio.Event()]
            runs = [
                asyncio.create_task(alice.run(count=1, ready=ready[0])),
                asyncio.create_task(bob.run(count=1, ready=ready[1])),
            ]
            await asyncio.gather(*(event.wait() for event in ready))
            sent = await send_async(
                base, "alice", "For Alice", "--body", "42 EUR", "--source", "ci"
            )
            assert sent["user"] == "alice" and sent["offset"] == 1
            await runs[0]
            await send_async(base, "bob", "For Bob")
            await runs[1]  # bob's first notification is his own: alice's never reached him

        run(scenario)
    assert titles(alice) == ["For Alice"] and titles(bob) == ["For Bob"]
    assert alice.received[0].data["kind"] == "notification"
    assert alice.received[0].data["body"] == "42 EUR" and alice.received[0].data["source"] == "ci"
    assert any("For Alice - 42 EUR (from ci)" in line for line in screen.lines)
    saved = device.load_position(tmp_path / "alice.json", "alice")
    assert saved is not None and saved.offset == 1


def test_a_device_whose_network_dropped_gets_what_it_missed(tmp_path: Path) -> None:
    with ThreadedServer(make_app()) as server:

        async def scenario() -> None:
            async with Network(server.port) as network:
                screen = Screen()
                phone = device.Device(
                    f"http://127.0.0.1:{network.port}",
                    "alice",
                    "wonderland",
                    tmp_path / "alice.json",
                    show=screen,
                    backoff_max=0.5,
                )
                ready = asyncio.Event()
                running = asyncio.create_task(phone.run(count=3, ready=ready))
                await ready.wait()
                await send_async(server.url, "alice", "before")
                await screen.shown("before")  # live
                network.cut()  # the phone goes into a tunnel
                await send_async(server.url, "alice", "in the tunnel")
                await send_async(server.url, "alice", "still in it")
                network.restore()
                await running
                assert phone.client is not None and phone.client.reconnects == 1
                assert titles(phone) == ["before", "in the tunnel", "still in it"]
                assert [p.offset for p in phone.received] == [1, 2, 3]

        run(scenario)


def test_the_device_refreshes_its_token_before_it_expires(tmp_path: Path) -> None:
    with ThreadedServer(make_app(token_ttl=2)) as server:
        screen = Screen()
        phone = device.Device(server.url, "alice", "wonderland", tmp_path / "a.json", show=screen)

        async def scenario() -> None:
            ready = asyncio.Event()
            running = asyncio.create_task(phone.run(count=1, ready=ready))
            await ready.wait()
            assert phone.client is not None and phone.client.expires is not None
            first_expiry = phone.client.expires
            await screen.shown("token refreshed")
            # Past the first token's expiry, at which the server would have closed (4002)
            # a connection that was not refreshed.
            await asyncio.sleep(first_expiry + 0.5 - time.time())
            await send_async(server.url, "alice", "still here")
            await running
            assert phone.client.reconnects == 0 and titles(phone) == ["still here"]

        run(scenario)


def test_a_restarted_device_resumes_from_its_state_file(tmp_path: Path) -> None:
    state = tmp_path / "alice.json"
    with ThreadedServer(make_app()) as server:
        base = server.url

        def phone(screen: Screen) -> Any:
            return device.Device(base, "alice", "wonderland", state, show=screen)

        async def scenario() -> None:
            first, ready = phone(Screen()), asyncio.Event()
            running = asyncio.create_task(first.run(count=1, ready=ready))
            await ready.wait()
            await send_async(base, "alice", "one")
            await running  # the app is stopped after one
            assert titles(first) == ["one"]

            await send_async(base, "alice", "two")  # while it is not running
            await send_async(base, "alice", "three")
            screen = Screen()
            second = phone(screen)
            await second.run(count=2)
            assert titles(second) == ["two", "three"]  # not "one" again
            assert "following user:alice after offset 1" in screen.lines

            # A position the server cannot resume (its stream restarted, say): the device
            # says so and shows what the channel still keeps.
            state.write_text(json.dumps({"user": "alice", "offset": 7, "epoch": "gone"}))
            screen = Screen()
            third = phone(screen)
            await third.run(count=3)
            assert titles(third) == ["one", "two", "three"]
            await screen.shown("could not be recovered")
            assert device.load_position(state, "alice") != (7, "gone")

        run(scenario)


def test_marking_read_reaches_the_users_other_devices(tmp_path: Path) -> None:
    with ThreadedServer(make_app()) as server, server.client() as http:
        base = server.url
        screen = Screen()
        phone = device.Device(base, "alice", "wonderland", tmp_path / "a.json", show=screen)
        cookie = login(http, "alice", "wonderland")

        async def scenario() -> None:
            ready = asyncio.Event()
            running = asyncio.create_task(phone.run(ready=ready))
            await ready.wait()
            sent = await send_async(base, "alice", "hello")
            await screen.shown("hello")
            assert phone.unread == 1
            mark = {"offset": sent["offset"], "epoch": sent["epoch"]}
            answer = await asyncio.to_thread(
                http.post, "/api/read", json=mark, headers={"Cookie": cookie}
            )
            assert answer.status == 200 and answer.json() == {"read": mark}
            await screen.shown("read up to 1 on another device; unread: 0")
            assert phone.unread == 0
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

        run(scenario)
        me = http.get("/api/me", headers={"Cookie": cookie}).json()
        assert me["read"]["offset"] == 1
        back = http.post(
            "/api/read",
            json={"offset": 0, "epoch": me["read"]["epoch"]},
            headers={"Cookie": cookie},
        )
        assert back.json()["read"]["offset"] == 1  # a marker does not go back
        assert http.post("/api/read", json={"offset": 1, "epoch": "x"}).status == 401


# --- send.py's answers ---------------------------------------------------------------------


def test_send_with_a_wrong_key_exits_non_zero_with_a_clear_message() -> None:
    with ThreadedServer(make_app()) as server:
        wrong = send(server.url, "alice", "hi", api_key="not-the-key")
        assert wrong.returncode == 3 and wrong.stdout == ""
        assert "HTTP 401" in wrong.stderr and "wrong api key" in wrong.stderr
        assert "RTSERVE_API_KEY" in wrong.stderr

        missing = send(server.url, "alice", "hi", api_key=None)
        assert missing.returncode == 2 and "no API key" in missing.stderr

        bad_user = send(server.url, "alice:2", "hi")
        assert bad_user.returncode == 2 and "not a user id" in bad_user.stderr

        no_api = send(server.url + "/elsewhere", "alice", "hi")  # no publish API there
        assert no_api.returncode == 4 and "refused: HTTP 404" in no_api.stderr

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = send(closed, "alice", "hi")
    assert down.returncode == 5 and f"cannot reach {closed}" in down.stderr


def test_send_with_the_same_idempotency_key_lands_once() -> None:
    with ThreadedServer(make_app()) as server:
        first = send(server.url, "bob", "Build 17 failed", "--idempotency-key", "ci-build-17")
        again = send(server.url, "bob", "Build 17 failed", "--idempotency-key", "ci-build-17")
        other = send(server.url, "bob", "Build 18 passed", "--idempotency-key", "ci-build-18")
        assert first.returncode == again.returncode == other.returncode == 0, first.stderr
        offsets = [json.loads(done.stdout)["offset"] for done in (first, again, other)]
        assert offsets == [1, 1, 2]


def test_the_page_uses_rtserve_js_with_get_token() -> None:
    with ThreadedServer(make_app()) as server, server.client() as http:
        page = http.get("/")
        assert page.status == 200 and '<script src="/rtserve.js">' in page.text
        script = http.get("/static/app.js")
        assert script.status == 200 and "new Rtserve({ getToken })" in script.text
        assert http.get("/rtserve.js").status == 200
        assert http.get("/static/style.css").status == 200


def test_the_channels_go_to_redis_when_a_url_is_given() -> None:
    from rtserve.broker.memory import MemoryBroker
    from rtserve.broker.redis import RedisBroker

    assert isinstance(make_app().hub.broker, MemoryBroker)
    app = make_app(redis_url="redis://127.0.0.1:6379/5")  # made, not connected (no start)
    assert isinstance(app.hub.broker, RedisBroker)


def test_demo_users_exist_only_with_the_development_secret(tmp_path: Path) -> None:
    users = tmp_path / "users.sqlite3"
    store = service.UserStore(users)
    store.add_user("carol", "Carol", "carol-secret")
    store.close()
    real = service.create_app(
        token_secret=TOKEN_SECRET, api_key=API_KEY, cookie_secret=COOKIE_SECRET, db=users
    )
    with ThreadedServer(real) as server, server.client() as http:
        carol = http.post("/api/login", json={"user": "carol", "password": "carol-secret"})
        assert carol.status == 200 and carol.json()["name"] == "Carol"
        alice = http.post("/api/login", json={"user": "alice", "password": "wonderland"})
        assert alice.status == 401  # no demo users next to a real secret
    dev = service.create_app(token_secret=service.DEV_TOKEN_SECRET, db=tmp_path / "dev.sqlite3")
    with ThreadedServer(dev) as server, server.client() as http:
        alice = http.post("/api/login", json={"user": "alice", "password": "wonderland"})
        assert alice.status == 200
