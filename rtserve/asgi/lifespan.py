"""The ASGI `lifespan` protocol: the hosted app's startup and shutdown, run in the App's
startup and shutdown hooks.

An app that raises before it asks for its first lifespan message does not speak lifespan
(Django's ASGI handler, say): it is served without. A startup it reports failed, or raises
in, aborts the server's start with its message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rtserve.asgi.types import ASGI_VERSION, ASGIApp, Message
from rtserve.errors import RtserveError

log = logging.getLogger("rtserve.asgi")


class LifespanError(RtserveError):
    """A hosted ASGI app's lifespan startup failed: the server does not start."""


class Lifespan:
    """One run of a hosted app's lifespan; `state` is the dict every request scope copies."""

    def __init__(self, app: ASGIApp, name: str, state: dict[str, Any]) -> None:
        self._app = app
        self._name = name
        self._state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=2)
        self._asked = False  # the app called receive(): it speaks lifespan
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Start the app's lifespan and wait for its startup; LifespanError if it failed."""
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._stopped = loop.create_future()
        self._inbox.put_nowait({"type": "lifespan.startup"})
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self._state}
        self._task = loop.create_task(self._run(scope))
        await self._started

    async def shutdown(self, timeout: float | None = None) -> None:
        """Ask the app to shut down and wait for it, at most `timeout` seconds (then its
        lifespan is cancelled); a failure is logged."""
        task = self._task
        if task is None or task.done() or self._stopped is None:
            return
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        done, _ = await asyncio.wait(
            (self._stopped, task), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            log.warning("%s did not finish its shutdown in %g s: cancelled", self._name, timeout)
            task.cancel()

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:
            if not self._asked:
                log.info("%s does not speak ASGI lifespan (%s): served without", self._name, exc)
            elif not _settle(self._started, LifespanError(f"{self._name} startup raised {exc!r}")):
                log.exception("%s lifespan failed", self._name)
        finally:
            _settle(self._started)
            _settle(self._stopped)

    async def _receive(self) -> Message:
        self._asked = True
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        reason = message.get("message", "")
        if kind == "lifespan.startup.complete":
            _settle(self._started)
        elif kind == "lifespan.startup.failed":
            _settle(self._started, LifespanError(f"{self._name} startup failed: {reason}"))
        elif kind == "lifespan.shutdown.complete":
            _settle(self._stopped)
        elif kind == "lifespan.shutdown.failed":
            log.error("%s shutdown failed: %s", self._name, reason)
            _settle(self._stopped)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in lifespan")


def _settle(future: asyncio.Future[None] | None, error: Exception | None = None) -> bool:
    """Complete `future` (with `error`) unless it is done; whether it was settled now."""
    if future is None or future.done():
        return False
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
    return True
