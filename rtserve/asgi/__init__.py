"""Hosting ASGI 3 apps (FastAPI, Starlette, Django) and WSGI apps (through a2wsgi) in an App.

`HostedApp(prefix, app)` is the component `rtserve.App.mount(prefix, app)` mounts. A hosted
app finds the rtserve App it runs in under its scope's `extensions["rtserve"]["app"]`
(`rtserve.App.of(scope)`).
"""

from rtserve.asgi.http import ASGIProtocolError
from rtserve.asgi.lifespan import LifespanError
from rtserve.asgi.mount import HostedApp, is_asgi_app
from rtserve.asgi.types import RTSERVE_EXTENSION

__all__ = ["RTSERVE_EXTENSION", "ASGIProtocolError", "HostedApp", "LifespanError", "is_asgi_app"]
