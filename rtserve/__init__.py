"""rtserve: a real-time server toolkit for Python."""

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
from rtserve.app.websocket import WebSocketGroup, WebSocketHandler, broadcast
from rtserve.broker import Broker, MemoryBroker
from rtserve.errors import ConfigError, HTTPError, MissingArgument, RtserveError
from rtserve.realtime.application import App
from rtserve.realtime.context import ChannelContext, ConnectContext, ConnectResult, RpcContext
from rtserve.realtime.protocol import ChannelError, ErrorCode
from rtserve.realtime.rules import ChannelRule
from rtserve.realtime.settings import ChannelSettings
from rtserve.server.settings import ServerSettings

__version__ = "0.1.0"

__all__ = [
    "App",
    "Broker",
    "ChannelContext",
    "ChannelError",
    "ChannelRule",
    "ChannelSettings",
    "ConfigError",
    "ConnectContext",
    "ConnectResult",
    "ErrorCode",
    "FileResponse",
    "HTMLResponse",
    "HTTPError",
    "Handler",
    "JSONResponse",
    "MemoryBroker",
    "MissingArgument",
    "RedirectResponse",
    "Request",
    "Response",
    "RpcContext",
    "RtserveError",
    "ServerSettings",
    "StreamingResponse",
    "WebSocketGroup",
    "WebSocketHandler",
    "__version__",
    "broadcast",
]
