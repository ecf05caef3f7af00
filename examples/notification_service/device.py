"""A phone-like client of the notification service, on rtserve.client.

It does what a mobile app does: logs in over HTTP (the session cookie), asks the server for a
channel token for its user, follows `user:<id>` over a WebSocket and prints each notification.
It remembers the offset of the last one it handled in a small file, so that when it comes back
(after the network dropped, or the app was stopped) it asks for what it missed:

- a dropped connection: rtserve.client reconnects by itself (with a fresh token from
  `get_token`) and subscribes again from its position; the missed notifications come first;
- a restart: the position comes from the state file (`subscribe(since=...)`);
- when the server cannot give them (it restarted, or the device was away longer than the
  channel's history), it says so and shows what the server still keeps.

It refreshes its token before it expires (the `refresh` command), so the connection is not
closed at the token's expiry.

    python examples/notification_service/device.py alice        # asks for the password
    NOTIFY_PASSWORD=wonderland python examples/notification_service/device.py alice --count 3

Exit codes: 0 done (or Ctrl-C), 1 login refused or the server ended the connection for good,
2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import http.cookiejar
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtserve.client import Client, ClientError, Disconnected, Position, Publication, Unrecovered


class LoginFailed(Exception):
    """The server refused the user's credentials (HTTP 401)."""


class Account:
    """The device's HTTP session with the service: login (a cookie) and channel tokens.

    Blocking (urllib); `get_token` runs `token` in a thread for rtserve.client. Network
    failures raise OSError (urllib.error.URLError), so the client retries them.
    """

    def __init__(self, base_url: str, user: str, password: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self._password = password
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body or {}).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with self._opener.open(request, timeout=self.timeout) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer

    def login(self) -> dict[str, Any]:
        """Log in; the answer ({"user", "name"}). LoginFailed on a wrong user or password."""
        try:
            return self._post("/api/login", {"user": self.user, "password": self._password})
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise LoginFailed(
                    f"login refused for {self.user!r}: wrong user or password"
                ) from None
            raise

    def me(self) -> dict[str, Any]:
        """GET /api/me: the user and their read marker."""
        with self._opener.open(self.base_url + "/api/me", timeout=self.timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def token(self) -> str:
        """A fresh channel token; logs in again once if the session has ended."""
        try:
            return str(self._post("/api/token")["token"])
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
        self.login()
        return str(self._post("/api/token")["token"])

    async def get_token(self) -> str:
        return await asyncio.to_thread(self.token)


def load_position(path: Path, user: str) -> Position | None:
    """The position saved for `user` in the state file, or None (no file, another user's, or
    unreadable: then the device starts from now)."""
    try:
        state = json.loads(path.read_text("utf-8"))
        if state.get("user") == user:
            return Position(int(state["offset"]), str(state["epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def save_position(path: Path, user: str, position: Position) -> None:
    """Write the state file atomically (a crash leaves the old one or the new one)."""
    state = {"user": user, "offset": position.offset, "epoch": position.epoch}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state), "utf-8")
    os.replace(temporary, path)


def websocket_url(base_url: str) -> str:
    """ws(s)://host/rt/ws for http(s)://host."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + "/rt/ws"
    return "ws://" + base.removeprefix("http://") + "/rt/ws"


class Device:
    """Follows the user's channel and prints notifications; see the module docstring.

    show: where lines go (print by default). backoff_max: the longest wait between reconnects.
    After `run`: `received` (the notifications handled, as Publications), `client` (the last
    rtserve Client), `unread` (notifications above the read marker seen by this run).
    """

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        state_file: Path,
        *,
        show: Callable[[str], Any] = print,
        backoff_max: float = 10.0,
    ) -> None:
        self.account = Account(base_url, user, password)
        self.user = user
        self.channel = f"user:{user}"
        self.url = websocket_url(base_url)
        self.state_file = state_file
        self.show = show
        self.backoff_max = backoff_max
        self.client: Client | None = None
        self.received: list[Publication] = []
        self.read: Position | None = None
        self.unread = 0
        self._epoch = ""

    async def run(self, count: int | None = None, ready: asyncio.Event | None = None) -> None:
        """Log in and follow the channel until `count` notifications were handled (None:
        forever). `ready` is set once subscribed. Raises LoginFailed, or Disconnected /
        ClientError when the server ends the connection for good."""
        me = await self._log_in()
        if me.get("read"):
            self.read = Position(int(me["read"]["offset"]), str(me["read"]["epoch"]))
        since = load_position(self.state_file, self.user)
        client = self.client = Client(
            self.url, get_token=self.account.get_token, backoff_max=self.backoff_max
        )
        async with client:
            refresher = asyncio.create_task(self._refresh_token(client))
            try:
                sub = await client.subscribe(self.channel, since=since)
                assert sub.position is not None
                self._epoch = since.epoch if since is not None else sub.position.epoch
                if since is None:
                    save_position(self.state_file, self.user, sub.position)
                    self.show(f"following {self.channel} from now on")
                else:
                    self.show(f"following {self.channel} after offset {since.offset}")
                if ready is not None:
                    ready.set()
                while count is None or len(self.received) < count:
                    try:
                        pub = await anext(sub)
                    except StopAsyncIteration:
                        return
                    except Unrecovered as gap:
                        await self._unrecovered(client, gap)
                        continue
                    except ClientError as exc:  # an `unsubscribe` push (a new epoch): again
                        self.show(f"subscription ended ({exc.code} {exc.message}); resubscribing")
                        sub = await client.subscribe(self.channel, since=sub.position)
                        continue
                    self._handle(pub)
                    save_position(self.state_file, self.user, Position(pub.offset, self._epoch))
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher

    async def _log_in(self) -> dict[str, Any]:
        """Log in, waiting (with backoff) while the server cannot be reached."""
        delay = 0.5
        while True:
            try:
                answer = await asyncio.to_thread(self.account.login)
                self.show(f"logged in as {answer.get('name', self.user)}")
                return await asyncio.to_thread(self.account.me)
            except urllib.error.HTTPError:
                raise
            except OSError as exc:
                self.show(f"offline ({exc}); trying again in {delay:g} s")
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)

    def _handle(self, pub: Publication) -> None:
        data = pub.data if isinstance(pub.data, dict) else {"title": str(pub.data)}
        if data.get("kind") == "read":
            self.read = Position(int(data["offset"]), str(data["epoch"]))
            self.unread = sum(1 for p in self.received if self._is_unread(p.offset))
            self.show(f"read up to {self.read.offset} on another device; unread: {self.unread}")
            return
        self.received.append(pub)
        if self._is_unread(pub.offset):
            self.unread += 1
        sent = data.get("time")
        when = time.strftime("%H:%M:%S", time.localtime(sent)) if isinstance(sent, int) else ""
        line = f"[{pub.offset}] {when} {data.get('title', '(no title)')}".replace("  ", " ")
        for key, form in (("body", " - {}"), ("url", " <{}>"), ("source", " (from {})")):
            if data.get(key):
                line += form.format(data[key])
        self.show(line)

    def _is_unread(self, offset: int) -> bool:
        read = self.read
        return read is None or read.epoch != self._epoch or offset > read.offset

    async def _unrecovered(self, client: Client, gap: Unrecovered) -> None:
        """Notifications were lost: show the kept ones the subscription will not deliver."""
        self.show("! some notifications could not be recovered; showing what the server keeps")
        same_epoch = gap.since is not None and gap.since.epoch == gap.position.epoch
        self._epoch = gap.position.epoch
        try:
            kept = await client.history(self.channel)
        except ClientError as exc:
            self.show(f"! no history: {exc.code} {exc.message}")
            kept = None
        if kept is not None and kept.position.epoch == gap.position.epoch:
            for pub in kept.publications:
                newer = not same_epoch or gap.since is None or pub.offset > gap.since.offset
                if pub.offset <= gap.position.offset and newer:
                    self._handle(pub)
        save_position(self.state_file, self.user, gap.position)

    async def _refresh_token(self, client: Client) -> None:
        """Send a fresh token when 80 % of the current one's life has passed."""
        while True:
            expires = client.expires
            if expires is None:
                return
            await asyncio.sleep(max(0.5, (expires - time.time()) * 0.8))
            if client.expires is not None and client.expires > expires:
                continue  # reconnected meanwhile, with a newer token
            try:
                until = await client.refresh(await self.account.get_token())
            except (OSError, TimeoutError, ClientError, Disconnected, LoginFailed) as exc:
                # Not fatal: at the expiry the server closes the connection, and the client
                # reconnects with a token from get_token.
                self.show(f"! token refresh failed: {exc}")
                await asyncio.sleep(1.0)
                continue
            if until is not None:
                valid = time.strftime("%H:%M:%S", time.localtime(until))
                self.show(f"token refreshed, valid until {valid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Follow a user's notifications like a phone.")
    parser.add_argument("user")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument(
        "--state", type=Path, default=None, help="state file (default: .device-<user>.json)"
    )
    parser.add_argument("--count", type=int, default=None, help="exit after N notifications")
    args = parser.parse_args(argv)
    password = os.environ.get("NOTIFY_PASSWORD") or getpass.getpass(f"password for {args.user}: ")
    state = args.state or Path(f".device-{args.user}.json")
    device = Device(args.url, args.user, password, state, show=lambda s: print(s, flush=True))
    try:
        asyncio.run(device.run(count=args.count))
    except KeyboardInterrupt:
        return 0
    except LoginFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as exc:
        print(f"error: {args.url} answered HTTP {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except (Disconnected, ClientError) as exc:
        print(f"error: the server ended the connection: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
