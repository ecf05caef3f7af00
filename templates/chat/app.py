"""The chat's server side: who connects, and what a message may be.

rtserve.yaml names these hooks (`app:on_connect`, `app:on_publish`); rtserve imports this
module when the project loads. Raise ChannelError(code, message) to refuse: the client gets
the code (use 1000 and above for your own).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rtserve import ChannelContext, ChannelError, ConnectContext, ConnectResult

MAX_NAME = 32  # characters of a display name
MAX_TEXT = 1000  # characters of a message

NO_NAME = 1001
EMPTY_MESSAGE = 1002
MESSAGE_TOO_LONG = 1003


def on_connect(ctx: ConnectContext) -> ConnectResult:
    """Accept a connection that says who it is: `connect` with data `{"name": "Ada"}`.

    There is no login here: anyone may take any name. To authenticate, check a session cookie
    (`ctx.request.cookies`) or give the page a token (channels.token_secret, rtserve.tokens.mint)
    and use `ctx.claims.user`.
    """
    data = ctx.data if isinstance(ctx.data, dict) else {}
    name = data.get("name")
    name = " ".join(name.split()) if isinstance(name, str) else ""
    if not name:
        raise ChannelError(NO_NAME, "pick a name")
    if len(name) > MAX_NAME:
        raise ChannelError(NO_NAME, f"a name has at most {MAX_NAME} characters")
    return ConnectResult(user=name, info={"name": name})


def on_publish(ctx: ChannelContext) -> dict[str, Any]:
    """Check a message (`{"text": "..."}`) and publish it with its author and time.

    What this returns is what every member receives (and what the history keeps). Store it in
    your database here if messages must outlive the channel's history.
    """
    text = ctx.data.get("text") if isinstance(ctx.data, dict) else None
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        raise ChannelError(EMPTY_MESSAGE, "a message needs some text")
    if len(text) > MAX_TEXT:
        raise ChannelError(MESSAGE_TOO_LONG, f"a message has at most {MAX_TEXT} characters")
    return {
        "text": text,
        "name": ctx.user or "anonymous",
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
