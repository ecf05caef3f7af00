"""rtserve: a real-time server toolkit for Python."""

from rtserve.app.app import App
from rtserve.app.handler import Handler
from rtserve.app.request import Request
from rtserve.app.response import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from rtserve.app.static import FileResponse
from rtserve.app.websocket import WebSocketHandler, broadcast
from rtserve.errors import ConfigError, HTTPError, RtserveError
from rtserve.server.settings import ServerSettings

__version__ = "0.1.0"

__all__ = [
    "App",
    "ConfigError",
    "FileResponse",
    "HTMLResponse",
    "HTTPError",
    "Handler",
    "JSONResponse",
    "RedirectResponse",
    "Request",
    "Response",
    "RtserveError",
    "ServerSettings",
    "StreamingResponse",
    "WebSocketHandler",
    "__version__",
    "broadcast",
]
