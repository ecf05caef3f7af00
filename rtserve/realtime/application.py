"""`rtserve.App`: the core App with the channel conveniences (`channel`, `publish`, `rpc`...).

Each of them mounts the app's `Channels` component on first use; an App that never uses
channels builds no broker and no hub, and serves no channel endpoint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rtserve.app.app import App as CoreApp
from rtserve.app.component import Component
from rtserve.asgi import RTSERVE_EXTENSION, HostedApp
from rtserve.asgi.mount import DEFAULT_WSGI_THREADS, Interface
from rtserve.broker.base import Broker, StreamPosition
from rtserve.realtime.component import Channels
from rtserve.realtime.protocol import METHOD_NAME, check_publishable
from rtserve.realtime.rules import RULE_OPTIONS, ChannelRule
from rtserve.realtime.settings import ChannelSettings
from rtserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from rtserve.realtime.hub import Hub
    from rtserve.tokens import TokenClaims

F = TypeVar("F", bound=Callable[..., Any])


class App(CoreApp):
    """A web application with channels. See the core App for routes, settings and hooks.

    channels: settings of the channel layer (tokens, publish API key, endpoints' prefix).
    broker: the engine of the channels (default: a MemoryBroker, one process).
    Both are used when the channels are first needed, and mounted then.
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        cookie_secret: str | Sequence[str] | None = None,
        xsrf_cookies: bool = False,
        gzip_min_size: int | None = 1024,
        template_dir: str | Path = "templates",
        channels: ChannelSettings | None = None,
        broker: Broker | None = None,
    ) -> None:
        super().__init__(
            settings,
            cookie_secret=cookie_secret,
            xsrf_cookies=xsrf_cookies,
            gzip_min_size=gzip_min_size,
            template_dir=template_dir,
        )
        self._channel_settings = channels
        self._broker = broker

    def mount(
        self,
        target: Component | str,
        hosted: Any = None,
        /,
        *,
        interface: Interface | None = None,
        threads: int = DEFAULT_WSGI_THREADS,
        lifespan: bool = True,
    ) -> None:
        """Mount a component (`mount(channels)`), or serve an ASGI 3 app (FastAPI, Starlette,
        Django) at a path prefix beside this app's routes and channels: `mount("/api",
        fastapi_app)` ('' for the whole site). A WSGI app (Flask, Django's WSGI handler) runs
        in a pool of `threads`; `interface` ('asgi' or 'wsgi') says which when the guess (a
        coroutine callable is ASGI) is wrong. `lifespan=False` skips the ASGI app's lifespan.
        """
        if isinstance(target, str):
            if hosted is None:
                raise TypeError(f"mount({target!r}, app): the app to serve there is missing")
            component: Component = HostedApp(
                target, hosted, interface=interface, threads=threads, lifespan=lifespan
            )
        elif hosted is not None:
            raise TypeError("mount(path, app) takes the path first")
        else:
            component = target
        super().mount(component)

    @classmethod
    def of(cls, scope: Any) -> App:
        """The App an ASGI app hosted by `mount` runs in, from its request's scope (FastAPI:
        `App.of(request.scope)`): publish with it. LookupError outside one."""
        try:
            app = scope["extensions"][RTSERVE_EXTENSION]["app"]
        except (KeyError, TypeError):
            raise LookupError("this scope does not come from an rtserve App") from None
        if not isinstance(app, cls):
            raise LookupError(f"the scope's app is a {type(app).__name__}, not an {cls.__name__}")
        return app

    def verify_token(self, token: str) -> TokenClaims:
        """The claims of a connection token, checked with this app's channel secret: who the
        caller is, for a hosted app's own routes. ChannelError 109 when expired, 101 when not
        acceptable."""
        from rtserve.realtime.access import verify_token  # it loads the hub: only when used

        return verify_token(self.channels.settings, token)

    @property
    def channels(self) -> Channels:
        """This app's Channels component, made and mounted on first use."""
        channels = self.component(Channels)
        if channels is None:
            channels = Channels(self._broker, self._channel_settings)
            self.mount(channels)
        return channels

    @property
    def hub(self) -> Hub:
        """The hub of this app's channels (mounting them if need be)."""
        return self.channels.hub

    def channel(self, pattern: str, **options: Any) -> ChannelRule:
        """Allow the channels `pattern` matches, with the rule `options` (see ChannelRule).

        The app then serves the endpoints `{prefix}/ws`, `POST {prefix}/publish[/batch]`,
        `{prefix}/sse`, `{prefix}/poll`, `{prefix}/history`, `{prefix}/presence` and
        `{prefix}/client/publish` (the prefix as configured when the app is finalized).
        """
        unknown = set(options) - RULE_OPTIONS
        if unknown:
            raise TypeError(f"unknown channel option(s): {', '.join(sorted(unknown))}")
        return self.add_channel_rule(ChannelRule(pattern, **options))

    def add_channel_rule(self, rule: ChannelRule) -> ChannelRule:
        """Add a rule made beforehand (from rtserve.yaml, say); see `channel`."""
        return self.channels.add_rule(rule)

    def on_connect(self, hook: F) -> F:
        """Decorate the hook that accepts or refuses a channel connection (see ConnectContext)."""
        self.hub.on_connect = hook
        return hook

    def rpc(self, method: str) -> Callable[[F], F]:
        """Decorate the handler of the channel protocol's `rpc` command `method` (sync or
        async; see RpcContext): a request and its reply over the client's connection."""
        if not METHOD_NAME.match(method):
            raise ValueError(f"rpc method {method!r}: 1 to 128 of A-Z a-z 0-9 _ - : .")
        handlers = self.hub.rpc_handlers
        if method in handlers:
            raise ValueError(f"rpc method {method!r} is registered twice")

        def register(handler: F) -> F:
            handlers[method] = handler
            return handler

        return register

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """Publish `data` (any JSON value) to `channel` from server code; returns its position.
        `tags` (a small map of strings) are what subscribers' filters match.

        Raises ChannelError: 107 for data that is not JSON (NaN included) or bad tags, 102 for
        a channel without a rule, 115 when the broker fails.
        """
        check_publishable(data)
        return await self.hub.publish(channel, data, idempotency_key=idempotency_key, tags=tags)

    async def disconnect(self, user: str, reason: str = "") -> None:
        """End every live channel connection of `user`, on every worker and machine of the
        broker: WebSockets close with 4005 and SSE streams end with an `error` event 4005, after
        which rtserve.js and rtserve.client do not reconnect. To keep the user out, refuse them
        in `on_connect` too. ChannelError 115 when the broker fails."""
        await self.hub.disconnect_user(user, reason)

    def publish_threadsafe(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> concurrent.futures.Future[StreamPosition]:
        """`publish` from another thread (a worker pool, a sync library); a Future of the
        position. Raises RuntimeError when the app is not serving."""
        loop = self.hub.loop
        if loop is None:
            raise RuntimeError("the app is not running: publish_threadsafe needs a served app")
        return asyncio.run_coroutine_threadsafe(
            self.publish(channel, data, idempotency_key=idempotency_key, tags=tags), loop
        )


__all__ = ["App"]
