"""Team chat: rooms whose messages outlive the server, who is online, and who is typing.

Beyond the `chat` scaffold of `rtserve new`:

- Every message a client publishes to `chat:<room>` is stored in a SQLite database by the
  rule's `on_publish` hook, which stamps it with its row id. The channel keeps only the last
  100 messages (enough for a page that reconnects to recover what it missed); older ones, and
  everything after a restart, come from `GET /rooms/<room>/messages?before=<id>&limit=50`.
- A message may carry a `nonce` (the page sends one, and the same string as the publish's
  `idempotency_key`): a retry after a lost reply is stored once and delivered once.
- `typing:<room>` carries "someone is typing" events: no history, a small size limit and its
  own rate limit, so they cost nothing to keep and cannot flood a room.
- Presence (who is online) and join/leave pushes come from the `chat:<room>` channel.

    rtserve run examples/team_chat/app.py:create_app --port 8000
    # then open http://127.0.0.1:8000/ in two windows

Environment: TEAM_CHAT_DB, the SQLite file (default: team_chat.db in this folder);
TEAM_CHAT_REDIS, a Redis URL to use the Redis broker (for `--workers N`) instead of memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rtserve import (
    App,
    Broker,
    ChannelContext,
    ChannelError,
    ConnectContext,
    ConnectResult,
    HTTPError,
    Request,
)

HERE = Path(__file__).resolve().parent
DEFAULT_DB = HERE / "team_chat.db"

ROOM = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")  # a room name, in channels and in URLs
MAX_NAME = 32  # characters of a display name
MAX_TEXT = 2000  # characters of a message
MAX_NONCE = 64  # characters of a message's nonce
PAGE_SIZE = 50  # messages per page of GET /rooms/{room}/messages, by default ...
MAX_PAGE = 200  # ... and at most

# The app's own refusal codes (rtserve's are below 1000).
NO_NAME = 1001
EMPTY_MESSAGE = 1002
MESSAGE_TOO_LONG = 1003
BAD_ROOM = 1004
BAD_NONCE = 1005

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    room  TEXT NOT NULL,
    name  TEXT NOT NULL,
    text  TEXT NOT NULL,
    time  TEXT NOT NULL,
    nonce TEXT
);
CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_room_nonce ON messages (room, nonce)
    WHERE nonce IS NOT NULL;
"""


class MessageStore:
    """The messages of every room, in one SQLite file.

    All SQLite work runs on one thread of its own (the connection is made there and never
    leaves it), so a slow disk never blocks the event loop and writes are serialised. `open`
    before use and `close` after; both are idempotent. A message is a dict with `id` (which
    grows with every message of the database, so it orders a room's messages), `name`, `text`
    and `time` (ISO 8601, UTC).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="team-chat-db")
            await self._run(self._connect)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
            executor.shutdown(wait=True)

    async def add(
        self, room: str, name: str, text: str, nonce: str | None = None
    ) -> dict[str, Any]:
        """Store a message and return it. A repeat of a room's `nonce` stores nothing and
        returns the message first stored with it."""
        time = datetime.now(UTC).isoformat(timespec="milliseconds")
        return await self._run(self._add, room, name, text, time, nonce)

    async def page(
        self, room: str, *, before: int | None = None, limit: int = PAGE_SIZE
    ) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` messages of `room` with an id below `before` (all when None),
        oldest first, and whether there are older ones."""
        return await self._run(self._page, room, before, limit)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the message store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- on the store's thread --------------------------------------------------------------

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: one statement each
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")  # readers (another process) never block writers
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        self._db = db

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _add(self, room: str, name: str, text: str, time: str, nonce: str | None) -> dict[str, Any]:
        assert self._db is not None
        cursor = self._db.execute(
            "INSERT INTO messages (room, name, text, time, nonce) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING id, name, text, time",
            (room, name, text, time, nonce),
        )
        row = cursor.fetchone()
        if row is None:  # the nonce was seen: the message is already stored
            row = self._db.execute(
                "SELECT id, name, text, time FROM messages WHERE room = ? AND nonce = ?",
                (room, nonce),
            ).fetchone()
        return dict(row)

    def _page(self, room: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT id, name, text, time FROM messages WHERE room = ? AND id < ?"
            " ORDER BY id DESC LIMIT ?",
            (room, before if before is not None else 2**63 - 1, limit + 1),
        ).fetchall()
        return [dict(row) for row in reversed(rows[:limit])], len(rows) > limit


def display_name(ctx: ChannelContext) -> str:
    """The name on_connect gave the connection."""
    info = ctx.client.info or {}
    return str(info.get("name") or ctx.user or "anonymous")


def on_connect(ctx: ConnectContext) -> ConnectResult:
    """Accept a connection that says who it is: `connect` with data `{"name": "Ada"}`
    (refused with NO_NAME otherwise). There is no login: see README.md for real users."""
    data = ctx.data if isinstance(ctx.data, dict) else {}
    name = data.get("name")
    name = " ".join(name.split()) if isinstance(name, str) else ""
    if not name:
        raise ChannelError(NO_NAME, "pick a name")
    if len(name) > MAX_NAME:
        raise ChannelError(NO_NAME, f"a name has at most {MAX_NAME} characters")
    return ConnectResult(user=name, info={"name": name})


def check_room(ctx: ChannelContext) -> None:
    """on_subscribe of both rules: a room name is 1 to 64 of `A-Z a-z 0-9 _ . -`."""
    if not ROOM.match(ctx.params["room"]):
        raise ChannelError(BAD_ROOM, "a room name is 1 to 64 letters, digits, '_', '.' or '-'")


def make_on_publish(store: MessageStore) -> Callable[[ChannelContext], Any]:
    """The on_publish hook of `chat:{room}`, storing into `store`."""

    async def on_publish(ctx: ChannelContext) -> dict[str, Any]:
        """Check a message (`{"text": "...", "nonce"?: "..."}`), store it, and publish what
        was stored: `{"id", "name", "text", "time"}`.

        Refused with EMPTY_MESSAGE (no text), MESSAGE_TOO_LONG (over MAX_TEXT characters),
        BAD_NONCE or BAD_ROOM. The message is stored before the broker gives it an offset: if
        the publish then fails, the sender gets error 115 and the message is in the
        database; sending it again with the same nonce (and idempotency_key) stores nothing new.
        """
        check_room(ctx)
        data = ctx.data if isinstance(ctx.data, dict) else {}
        text = data.get("text")
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise ChannelError(EMPTY_MESSAGE, "a message needs some text")
        if len(text) > MAX_TEXT:
            raise ChannelError(MESSAGE_TOO_LONG, f"a message has at most {MAX_TEXT} characters")
        nonce = data.get("nonce")
        if nonce is not None and not (isinstance(nonce, str) and 0 < len(nonce) <= MAX_NONCE):
            raise ChannelError(BAD_NONCE, f"a nonce is a string of 1 to {MAX_NONCE} characters")
        return await store.add(ctx.params["room"], display_name(ctx), text, nonce)

    return on_publish


def on_typing(ctx: ChannelContext) -> dict[str, Any]:
    """The on_publish hook of `typing:{room}`: whatever the client sent (`{"typing": true}`
    or `false`), members get who it is, `{"name", "typing"}`, and nothing else."""
    check_room(ctx)
    data = ctx.data if isinstance(ctx.data, dict) else {}
    return {"name": display_name(ctx), "typing": data.get("typing", True) is not False}


def create_app(db_path: str | Path | None = None, *, broker: Broker | None = None) -> App:
    """The App: the page, the two channel rules, and the route that pages stored messages.

    `db_path` defaults to $TEAM_CHAT_DB, else team_chat.db in this folder. `broker` defaults
    to a RedisBroker on $TEAM_CHAT_REDIS (a `redis://` URL) when that is set, else to the
    in-process MemoryBroker. The store opens on the app's startup and closes on its shutdown.
    """
    store = MessageStore(db_path or os.environ.get("TEAM_CHAT_DB") or DEFAULT_DB)
    redis_url = os.environ.get("TEAM_CHAT_REDIS")
    if broker is None and redis_url:
        from rtserve.broker.redis import RedisBroker

        broker = RedisBroker(redis_url, prefix="team_chat")
    app = App(broker=broker)
    app.on_connect(on_connect)
    app.channel(
        "chat:{room}",
        history=100,  # enough for a page that was away a while to recover by itself
        history_ttl=3600,
        presence=True,
        join_leave=True,
        publish="clients",
        on_subscribe=check_room,
        on_publish=make_on_publish(store),
        # Bytes of JSON, checked before the hook runs: a backstop that MAX_TEXT characters
        # of any kind (6 bytes for an escaped control character) and a nonce always fit in.
        max_message_size=16384,
        publish_rate=2,
        publish_burst=5,
    )
    app.channel(
        "typing:{room}",
        history=0,  # not kept: a late typing event is worthless
        publish="clients",
        on_subscribe=check_room,
        on_publish=on_typing,
        max_message_size=64,
        publish_rate=0.5,  # one every 2 s per connection (the page sends one every 3 s) ...
        publish_burst=2,  # ... after 2 at once
        slow_consumer="drop_oldest",  # a slow page may miss some: they do not matter
        max_pending=10,
    )

    @app.route("/rooms/{room}/messages")
    async def messages(request: Request, room: str) -> dict[str, Any]:
        """`?before=<id>&limit=<n>`: the newest `limit` (default PAGE_SIZE, at most MAX_PAGE)
        messages of `room` older than message `before` (the newest without it), oldest first:
        `{"room", "messages": [...], "more": <older ones exist>}`. 400 for bad parameters."""
        if not ROOM.match(room):
            raise HTTPError(400, "bad room name")
        before = _int_param(request, "before", None, 1, 2**63 - 1)
        limit = _int_param(request, "limit", PAGE_SIZE, 1, MAX_PAGE)
        assert limit is not None
        page, more = await store.page(room, before=before, limit=limit)
        return {"room": room, "messages": page, "more": more}

    app.static_file("/", HERE / "static" / "index.html")
    app.static("/static", HERE / "static")
    app.on_startup.append(store.open)
    app.on_shutdown.append(store.close)
    return app


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """Query parameter `name` as an int in [low, high]; `default` when absent, 400 when bad."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}")
    return value
