"""The seam between an App and what it mounts (channels, admin, a hosted ASGI/WSGI app).

A component is installed once, when the app is finalized before it serves, so that its
configuration is complete when it adds its routes and its startup/shutdown hooks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rtserve.app.app import App


class Component(Protocol):
    """Something an App mounts: `install(app)` adds its routes and hooks, once."""

    def install(self, app: App) -> None: ...


class AdminInterface(Protocol):
    """What the app and its servers need of an admin interface (rtserve.stats.admin's
    AdminServer): whether it serves, its hooks, and serving on private addresses."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def private(self) -> AbstractContextManager[None]: ...


__all__ = ["AdminInterface", "Component"]
