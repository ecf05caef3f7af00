"""The notifications' server side: tokens for the browser, and a route that sends.

Each user has a channel, `user:<id>` (rule `user:{id}` with `token: true` in rtserve.yaml): a
browser may subscribe to it only with a token that names it, minted by this server. Other
services send with `POST /notify/<id>` (or the publish API, `POST /rt/publish`), both
authorised by `channels.api_key`.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from typing import Any

from rtserve import App, ChannelError, ErrorCode, HTTPError, Request
from rtserve.tokens import mint

USER_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")
TOKEN_TTL = 3600  # seconds; the page fetches a new token when it reconnects
DEV_PREFIX = "dev-only-"  # the development defaults of rtserve.yaml start with this
UNAVAILABLE = {ErrorCode.BROKER_UNAVAILABLE, ErrorCode.NOT_AVAILABLE}  # broker down, shutting down

log = logging.getLogger("notifications")


def create_app() -> App:
    """The App rtserve.yaml adds its routes and channels to (`app: app:create_app`)."""
    app = App()

    def warn_about_dev_secrets() -> None:
        settings = app.hub.settings
        if any(s.startswith(DEV_PREFIX) for s in settings.secrets() + settings.api_keys()):
            log.warning(
                "using the development token secret or API key from rtserve.yaml: "
                "set RTSERVE_TOKEN_SECRET and RTSERVE_API_KEY before you deploy"
            )

    app.on_startup.append(warn_about_dev_secrets)
    return app


def user_channel(user: str) -> str:
    if not USER_ID.match(user):
        raise HTTPError(400, "a user id is 1 to 64 characters of A-Z a-z 0-9 _ . @ -")
    return f"user:{user}"


def dev_token(request: Request) -> dict[str, Any]:
    """GET /token?user=alice: a token for whoever asks, as any user. DEV ONLY.

    There is no password: this stands in for your login. In production, mint the token in
    your login flow for the user you authenticated (as below, with rtserve.tokens.mint) and
    delete this route from rtserve.yaml. It answers 404 as soon as the token secret is a real
    one (not the "dev-only-" default), so a forgotten route gives nothing away.
    """
    secrets = request.app.hub.settings.secrets()
    if not secrets or not secrets[0].startswith(DEV_PREFIX):
        raise HTTPError(404)
    user = request.query.get("user", "")
    channel = user_channel(user)
    token = mint(secrets[0], user, channels=[channel], ttl=TOKEN_TTL, info={"name": user})
    return {"token": token, "user": user, "channel": channel, "expires_in": TOKEN_TTL}


async def notify(request: Request, user: str) -> dict[str, Any]:
    """POST /notify/{user}: send a notification to `user`'s pages. For other services.

    Authorization: `Bearer <channels.api_key>`. Body: `{"title": "...", "body": "...",
    "url": "..."}`, title required. The pages get the notification with an `id` and a `time`
    added. With an `Idempotency-Key` header, a retry within 5 minutes is not sent twice.
    503 when it cannot be sent now (the broker is down, the server is stopping): retry.
    """
    check_api_key(request)
    channel = user_channel(user)
    payload = await request.json()
    if not isinstance(payload, dict):
        raise HTTPError(400, 'send a JSON object: {"title": "...", "body": "..."}')
    title, body, url = (payload.get(key, "") for key in ("title", "body", "url"))
    if not (isinstance(title, str) and title.strip()):
        raise HTTPError(400, "a notification needs a title")
    if not (isinstance(body, str) and isinstance(url, str)):
        raise HTTPError(400, "body and url are strings")
    notification = {
        "id": uuid.uuid4().hex,
        "title": title.strip(),
        "body": body,
        "url": url,
        "time": time.time(),
    }
    key = request.headers.get("idempotency-key")
    try:
        position = await request.app.publish(channel, notification, idempotency_key=key)
    except ChannelError as exc:
        if exc.code not in UNAVAILABLE:
            raise
        # What failed (the broker's address, its error) is in the server's log, not the answer.
        raise HTTPError(
            503, "the notification was not sent; try again shortly", headers={"Retry-After": "1"}
        ) from None
    return {"channel": channel, "offset": position.offset, "epoch": position.epoch}


def check_api_key(request: Request) -> None:
    """The same keys as the publish API (`channels.api_key`): 403 without one, 401 if wrong."""
    keys = request.app.hub.settings.api_keys()
    if not keys:
        raise HTTPError(403, "no channels.api_key is set")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(
        hmac.compare_digest(given.strip().encode(), key.encode()) for key in keys
    ):
        raise HTTPError(401, "wrong or missing API key", headers={"WWW-Authenticate": "Bearer"})
