"""The exception tree of rtserve: every public exception class of the package derives from
RtserveError (tests/test_exception_tree.py checks it); one that is also a builtin error keeps
that base, so `except ValueError` still catches an OptionError.

RtserveError                     every error rtserve raises on purpose
 ├── HTTPError                   an HTTP answer with a status (handlers and the framework raise it)
 │    ├── MissingArgument        `request.query[name]` / `form[name]` absent: 400 (a KeyError too)
 │    └── RangeNotSatisfiable    a Range that selects no byte: 416 (app.conditional)
 ├── ProtocolError               the peer broke HTTP/1.1 framing; carries the status to answer
 ├── ClientDisconnected          the client went mid-response (server.exchange; a ConnectionError)
 ├── SendStalled                 the client took no bytes for too long (server.sendfile; ditto)
 ├── CannotListen                the server's address cannot be bound (server.listener)
 ├── HTTP2Unavailable            h2c asked for without the h2 package (server.negotiate)
 ├── CannotMakeCertificate       `rtserve dev-cert`: openssl missing or failing (cli.devcert_cmd)
 ├── HandshakeError              a WebSocket upgrade that cannot be accepted (protocol.ws_handshake)
 ├── WebSocketProtocolError      the peer broke RFC 6455; has the close code (protocol.websocket)
 │    └── DeflateError           a compressed message that cannot be accepted (protocol.deflate)
 ├── InvalidHandshake            the server refused our WebSocket (protocol.ws_client)
 ├── ConnectionClosed            our WebSocket is closed: code and reason (protocol.ws_client)
 ├── DeltaError                  a fossil delta that cannot be applied (protocol.fossil)
 ├── RouteError                  routes that cannot coexist, or an unknown route name
 ├── ConfigError                 bad settings, naming where they came from
 │    └── ConfigErrors           every problem of one config source (config.loader)
 ├── OptionError                 an option's value its settings class refuses (schema; a ValueError)
 ├── UnsetVariableError          `${NAME}` unset and without a default (config.env; a ValueError)
 ├── DotenvError                 a `.env` line that cannot be read (config.env; a ValueError)
 ├── BrokerError                 the broker could not do what was asked (broker.base)
 ├── ChannelError                a channel refusal with a stable code (realtime.protocol)
 │    ├── CommandError           a channel command that cannot be parsed (realtime.protocol)
 │    └── FilterError            a tag filter that cannot be used: code 118 (realtime.filters)
 ├── TokenError                  a channel token that cannot be accepted (tokens)
 │    ├── TokenExpired           a good signature whose `exp` has passed
 │    └── TokenInvalid           malformed, badly signed, another algorithm, or bad claims
 ├── ASGIProtocolError           a hosted ASGI app broke the protocol (asgi.http; a RuntimeError)
 ├── LifespanError               a hosted ASGI app's startup failed: no start (asgi.lifespan)
 ├── ClientError                 rtserve.client: the server refused a command (client.messages)
 ├── Disconnected                rtserve.client: the connection ended (client.messages)
 ├── Unrecovered                 rtserve.client: publications were lost (client.messages)
 ├── StatsError                  `rtserve stats`: the message before exiting 1 (cli.stats_cmd)
 └── WorkerUnavailable           a worker's admin socket did not answer (stats.combined)
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class RtserveError(Exception):
    """Root of every error rtserve raises on purpose."""


class HTTPError(RtserveError):
    """Stop a handler and answer with `status`; `detail` is shown to the client.

    `headers` are added to the error response (for example `Allow` on a 405).
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = int(status)
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        self.detail = detail if detail is not None else phrase
        self.headers = dict(headers or {})
        super().__init__(f"{self.status} {self.detail}")


class MissingArgument(HTTPError, KeyError):
    """A required query parameter or form field is absent: `request.query["q"]` answers 400
    by itself when nothing catches it, and is still the KeyError a mapping raises."""

    def __init__(self, where: str, name: str) -> None:
        super().__init__(400, f"missing {where} {name!r}")
        self.name = name

    def __str__(self) -> str:
        return f"{self.status} {self.detail}"


class ProtocolError(RtserveError):
    """The peer sent bytes that are not acceptable HTTP/1.1.

    `status` is the answer to send before closing (400, 408, 413, 431, ...).
    """

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


class RouteError(RtserveError):
    """Routes that conflict, or a route name that does not exist."""


class ConfigError(RtserveError):
    """Bad configuration; `where` names the source (file:line or the setting)."""

    def __init__(self, message: str, *, where: str | None = None, **extra: Any) -> None:
        self.where = where
        self.extra = extra
        super().__init__(f"{where}: {message}" if where else message)
