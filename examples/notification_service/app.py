"""A notification service: a real (small) login, per-user channels, and a read marker.

Users log in with a password (hashed with scrypt, kept in a sqlite3 database) and get a signed
session cookie. With that cookie, and only with it, `POST /api/token` mints a channel token
for the logged-in user: it allows one channel, `user:<id>`. Every device of the user (the
page in `static/`, the phone-like `device.py`) connects with such a token and follows that
channel. Other services send notifications with the publish API (`send.py`); the channel
keeps the last 100 for a week, so a device that was offline catches up from its last offset.
`POST /api/read` stores how far the user has read and tells the user's other devices.

    rtserve run examples/notification_service/app.py:create_app --port 8000

HTTP API (JSON bodies need `Content-Type: application/json`, 415 otherwise):

    POST /api/login   {"user", "password"} -> {"user", "name"} and the `session` cookie; 401
    POST /api/logout  -> 204, the cookie deleted
    GET  /api/me      -> {"user", "name", "channel", "read": {"offset", "epoch"} | null}; 401
    POST /api/token   -> {"token", "user", "channel", "expires_in"}; 401 without a session
    POST /api/read    {"offset", "epoch"} -> {"read": {...}}; also published to the channel
                      as {"kind": "read", "offset", "epoch"}

Environment: RTSERVE_TOKEN_SECRET, RTSERVE_API_KEY and NOTIFY_COOKIE_SECRET (each 32+ random
characters; the defaults start with "dev-only-"), NOTIFY_DB (the sqlite3 file; default: in
memory), NOTIFY_REDIS_URL (the channels on Redis; default: in this process). With the
development token secret, two demo users exist: alice / wonderland and bob / the-builder.
Add real users with `python app.py adduser <id> --db FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtserve import (
    App,
    Broker,
    ChannelSettings,
    HTTPError,
    JSONResponse,
    MemoryBroker,
    Request,
    Response,
)
from rtserve.tokens import mint

HERE = Path(__file__).resolve().parent
DEV_PREFIX = "dev-only-"  # every development default starts with this
DEV_TOKEN_SECRET = "dev-only-token-secret-change-me-0123456789"
DEV_API_KEY = "dev-only-api-key-change-me-0123456789"
DEV_COOKIE_SECRET = "dev-only-cookie-secret-change-me-0123456789"
DEMO_USERS = {"alice": ("Alice", "wonderland"), "bob": ("Bob", "the-builder")}

USER_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")  # what may follow "user:" in a channel name
SESSION_COOKIE = "session"
SESSION_MAX_AGE = 7 * 86400  # seconds a login lasts
TOKEN_TTL = 600  # seconds a channel token lasts; clients fetch a new one to reconnect/refresh
HISTORY = 100  # notifications kept per user ...
HISTORY_TTL = 7 * 86400.0  # ... for a week: a phone offline over a weekend catches up

# scrypt with n=2**14, r=8, p=1 (16 MiB, tens of milliseconds): the interactive-login figures
# of the scrypt paper, still the usual floor.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

log = logging.getLogger("notification_service")


def hash_password(password: str, salt: bytes) -> bytes:
    """The scrypt hash of `password` with `salt` (slow on purpose: run it off the loop)."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **SCRYPT)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str


class UserStore:
    """Users and their read markers in a sqlite3 database (`":memory:"` by default).

    The connection is shared with the server's thread (`check_same_thread=False`) but used
    from one thread at a time: the app's handlers run on the event loop. Password hashing, the
    slow part, is done in a worker thread by `check_password`.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS users (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, salt BLOB NOT NULL, hash BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS read_marks (
                user TEXT PRIMARY KEY REFERENCES users(id), epoch TEXT NOT NULL,
                offset INTEGER NOT NULL
            );
            """
        )
        # Unknown users are checked against this, so they take as long as known ones.
        self._decoy = (b"\0" * 16, hash_password(secrets.token_urlsafe(16), b"\0" * 16))

    def add_user(self, user_id: str, name: str, password: str) -> User:
        """Add or replace a user. ValueError for an id that cannot be in a channel name or a
        password shorter than 8 characters."""
        if not USER_ID.match(user_id):
            raise ValueError("a user id is 1 to 64 characters of A-Z a-z 0-9 _ . @ -")
        if len(password) < 8:
            raise ValueError("a password has at least 8 characters")
        salt = secrets.token_bytes(16)
        self.db.execute(
            "INSERT OR REPLACE INTO users (id, name, salt, hash) VALUES (?, ?, ?, ?)",
            (user_id, name or user_id, salt, hash_password(password, salt)),
        )
        return User(user_id, name or user_id)

    def get(self, user_id: str) -> User | None:
        row = self.db.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else User(row[0], row[1])

    async def check_password(self, user_id: str, password: str) -> User | None:
        """The user when `password` is theirs, else None (unknown users take as long)."""
        row = self.db.execute(
            "SELECT id, name, salt, hash FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        salt, expected = (row[2], row[3]) if row is not None else self._decoy
        given = await asyncio.to_thread(hash_password, password, salt)
        if row is None or not hmac.compare_digest(given, expected):
            return None
        return User(row[0], row[1])

    def read_mark(self, user_id: str) -> tuple[int, str] | None:
        """(offset, epoch) the user has read up to, or None."""
        row = self.db.execute(
            "SELECT offset, epoch FROM read_marks WHERE user = ?", (user_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def set_read_mark(self, user_id: str, offset: int, epoch: str) -> tuple[int, str]:
        """Move the user's marker to (offset, epoch); within one epoch it never goes back.
        Returns the marker as it stands."""
        current = self.read_mark(user_id)
        if current is not None and current[1] == epoch and current[0] >= offset:
            return current
        self.db.execute(
            "INSERT OR REPLACE INTO read_marks (user, epoch, offset) VALUES (?, ?, ?)",
            (user_id, epoch, offset),
        )
        return offset, epoch

    def close(self) -> None:
        self.db.close()


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


def create_app(
    *,
    token_secret: str | None = None,
    api_key: str | None = None,
    cookie_secret: str | None = None,
    db: str | Path | None = None,
    redis_url: str | None = None,
    demo_users: bool | None = None,
    token_ttl: int = TOKEN_TTL,
) -> App:
    """The notification service's App.

    Arguments left None come from the environment (RTSERVE_TOKEN_SECRET, RTSERVE_API_KEY,
    NOTIFY_COOKIE_SECRET, NOTIFY_DB, NOTIFY_REDIS_URL) or the development defaults. Without a
    Redis URL the channels live in this process (MemoryBroker): a restart loses them.
    `demo_users` (alice, bob) defaults to True exactly when the token secret is the development
    one. `token_ttl` is the lifetime of the channel tokens `/api/token` mints, in seconds.
    """
    token_secret = token_secret or os.environ.get("RTSERVE_TOKEN_SECRET") or DEV_TOKEN_SECRET
    api_key = api_key or os.environ.get("RTSERVE_API_KEY") or DEV_API_KEY
    cookie_secret = cookie_secret or os.environ.get("NOTIFY_COOKIE_SECRET") or DEV_COOKIE_SECRET
    dev_secrets = [s for s in (token_secret, api_key, cookie_secret) if s.startswith(DEV_PREFIX)]
    if demo_users is None:
        demo_users = token_secret.startswith(DEV_PREFIX)

    store = UserStore(db or os.environ.get("NOTIFY_DB") or ":memory:")
    if demo_users:
        for user_id, (name, password) in DEMO_USERS.items():
            if store.get(user_id) is None:
                store.add_user(user_id, name, password)

    redis_url = redis_url or os.environ.get("NOTIFY_REDIS_URL")
    # (The broker keeps each user's stream as long as the rule's history: a quiet week loses
    # nothing.)
    broker: Broker
    if redis_url:
        from rtserve.broker.redis import RedisBroker

        broker = RedisBroker(redis_url, prefix="notify")
    else:
        broker = MemoryBroker()
    app = App(
        cookie_secret=cookie_secret,
        channels=ChannelSettings(
            token_secret=token_secret,
            api_key=api_key,
            require_token=True,  # every connection is a logged-in user
            max_connections_per_user=10,  # tabs and phones; a reconnect loop is cut at 10
        ),
        broker=broker,
    )
    # user:alice, user:bob, ...: subscribing needs a token naming the channel; only the server
    # and the publish API send (publish="server", the default).
    app.channel("user:{id}", token=True, history=HISTORY, history_ttl=HISTORY_TTL)
    app.static_file("/", HERE / "static" / "index.html")
    app.static("/static", HERE / "static")

    def session_user(request: Request) -> User:
        user_id = request.get_signed_cookie(SESSION_COOKIE, max_age=SESSION_MAX_AGE)
        user = store.get(user_id) if user_id else None
        if user is None:
            raise HTTPError(401, "log in first")
        return user

    async def json_body(request: Request) -> dict[str, Any]:
        # Only JSON, which a form of another site cannot send: with the SameSite=Lax cookie,
        # this keeps cross-site requests from acting in the user's name.
        if request.content_type.split(";")[0].strip().lower() != "application/json":
            raise HTTPError(415, "send JSON with Content-Type: application/json")
        body = await request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "send a JSON object")
        return body

    @app.route("/api/login", methods=["POST"])
    async def login(request: Request) -> Response:
        body = await json_body(request)
        user_id, password = body.get("user"), body.get("password")
        if not (isinstance(user_id, str) and isinstance(password, str)):
            raise HTTPError(400, 'send {"user": "...", "password": "..."}')
        user = await store.check_password(user_id, password)
        if user is None:
            raise HTTPError(401, "wrong user or password")
        response = JSONResponse({"user": user.id, "name": user.name})
        response.set_signed_cookie(
            app.cookie_signer, SESSION_COOKIE, user.id, max_age=SESSION_MAX_AGE
        )
        return response

    @app.route("/api/logout", methods=["POST"])
    def logout(request: Request) -> Response:
        response = Response(status=204)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.route("/api/me")
    def me(request: Request) -> dict[str, Any]:
        user = session_user(request)
        mark = store.read_mark(user.id)
        read = None if mark is None else {"offset": mark[0], "epoch": mark[1]}
        return {"user": user.id, "name": user.name, "channel": user_channel(user.id), "read": read}

    @app.route("/api/token", methods=["POST"])
    def token(request: Request) -> Response:
        # The user comes from the session, never from the request: a token for oneself only.
        user = session_user(request)
        channel = user_channel(user.id)
        minted = mint(
            token_secret, user.id, channels=[channel], ttl=token_ttl, info={"name": user.name}
        )
        body = {"token": minted, "user": user.id, "channel": channel, "expires_in": token_ttl}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.route("/api/read", methods=["POST"])
    async def read(request: Request) -> dict[str, Any]:
        user = session_user(request)
        body = await json_body(request)
        offset, epoch = body.get("offset"), body.get("epoch")
        if not (type(offset) is int and offset >= 0 and isinstance(epoch, str) and epoch):
            raise HTTPError(400, 'send {"offset": <int >= 0>, "epoch": "..."}')
        offset, epoch = store.set_read_mark(user.id, offset, epoch)
        mark = {"offset": offset, "epoch": epoch}
        # The user's other devices learn it live (and from history when they come back).
        await app.publish(user_channel(user.id), {"kind": "read", **mark})
        return {"read": mark}

    async def warn_about_dev_secrets() -> None:
        if dev_secrets:
            log.warning(
                "DEV ONLY: development secrets in use; set RTSERVE_TOKEN_SECRET, "
                "RTSERVE_API_KEY and NOTIFY_COOKIE_SECRET before you deploy"
            )

    app.on_startup.append(warn_about_dev_secrets)
    app.on_shutdown.append(store.close)
    return app


def main(argv: list[str] | None = None) -> int:
    """`python app.py adduser ID [--name NAME] --db FILE`: add a user (the password is asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("adduser", help="add or replace a user; the password is asked")
    add.add_argument("user")
    add.add_argument("--name", default="")
    add.add_argument("--db", default=os.environ.get("NOTIFY_DB"), help="sqlite3 file (NOTIFY_DB)")
    args = parser.parse_args(argv)
    if not args.db:
        parser.error("--db (or NOTIFY_DB) is needed: users in memory would vanish at once")
    password = getpass.getpass(f"password for {args.user}: ")
    store = UserStore(args.db)
    try:
        store.add_user(args.user, args.name, password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"added {args.user} to {args.db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
