"""The ASGI 3 types the adapter speaks: scopes and messages are dicts, the app a coroutine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
# The scope extension under which a hosted app finds the rtserve App it is mounted on.
RTSERVE_EXTENSION = "rtserve"
