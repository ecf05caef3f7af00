"""Channels: the component that owns a Hub and its endpoints, mounted into an App.

Built from a broker, settings and rules; `install(app)` (once, when the app is finalized)
adds the endpoints under `settings.prefix` and the hooks that start and close the hub. Until
then its configuration may still change (`configure`); after, it is fixed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rtserve.broker.base import Broker
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.realtime.settings import ChannelSettings

if TYPE_CHECKING:
    from rtserve.app.app import App
    from rtserve.app.request import Request
    from rtserve.realtime.hub import Hub


class Channels:
    """The channel layer of one app: its Hub (rules, broker, settings, hooks) and endpoints."""

    def __init__(
        self,
        broker: Broker | None = None,
        settings: ChannelSettings | None = None,
        rules: ChannelRules | None = None,
    ) -> None:
        # Imported here: `import rtserve` and an App without channels load no hub.
        from rtserve.realtime.hub import Hub

        if broker is None:
            from rtserve.broker.memory import MemoryBroker

            broker = MemoryBroker()
        self.hub: Hub = Hub(rules or ChannelRules(), broker, settings or ChannelSettings())
        self.installed = False

    @property
    def settings(self) -> ChannelSettings:
        return self.hub.settings

    @property
    def broker(self) -> Broker:
        return self.hub.broker

    def add_rule(self, rule: ChannelRule) -> ChannelRule:
        """Allow the channels `rule` matches (a rule added while serving applies at once)."""
        self.hub.rules.add(rule)
        return rule

    def configure(
        self, *, settings: ChannelSettings | None = None, broker: Broker | None = None
    ) -> None:
        """Replace the settings and/or the broker; RuntimeError once installed, when the
        endpoints and the hub already depend on them."""
        if self.installed:
            raise RuntimeError(
                "the channels are installed (the app is serving, or its routes were listed): "
                "their settings and broker are fixed"
            )
        if settings is not None:
            self.hub.settings = settings
        if broker is not None:
            self.hub.broker = broker

    def install(self, app: App) -> None:
        """Add the endpoints under the settings' prefix and the hub's start/close hooks."""
        if self.installed:
            raise RuntimeError("these channels are installed already")
        self.installed = True
        add_channel_routes(app, self.hub.settings.prefix.rstrip("/"))
        # The hub starts before the app's own startup hooks and closes after its shutdown ones.
        app.on_startup.insert(0, self._start)
        app.on_shutdown.insert(0, self._close)

    async def _start(self) -> None:
        if len(self.hub.rules):
            await self.hub.start()

    async def _close(self) -> None:
        if self.hub.running:
            await self.hub.close()


def merged_settings(
    code: ChannelSettings, given: ChannelSettings, keys: frozenset[str]
) -> ChannelSettings:
    """`code`'s settings with the values of `keys` taken from `given` (what a YAML file set)."""
    names = {f.name for f in dataclasses.fields(ChannelSettings)}
    return dataclasses.replace(code, **{k: getattr(given, k) for k in keys & names})


def channels_of(app: App) -> Channels:
    """The channels mounted on `app`; LookupError when it has none."""
    channels = app.component(Channels)
    if channels is None:
        raise LookupError("the app has no channels mounted")
    return channels


def channel_rules(app: App) -> list[ChannelRule]:
    """The channel rules of `app`, in order (none without channels)."""
    channels = app.component(Channels)
    return [] if channels is None else list(channels.hub.rules)


def hub_of(request: Request) -> Hub:
    """The hub of the channels of the app answering `request`."""
    return channels_of(request.app).hub


def add_channel_routes(app: App, prefix: str) -> None:
    """Route the channel endpoints under `prefix`, and /rtserve.js."""
    from rtserve.app.static import rtserve_js
    from rtserve.app.websocket import WebSocketRoute
    from rtserve.realtime.poll import (
        client_publish_endpoint,
        history_endpoint,
        poll_endpoint,
        presence_endpoint,
    )
    from rtserve.realtime.publish_api import publish_batch_endpoint, publish_endpoint
    from rtserve.realtime.sse import sse_endpoint
    from rtserve.realtime.ws_session import ChannelSocket

    router = app.router
    # Commands of one connection must be handled in order, whatever the server default.
    router.add(
        f"{prefix}/ws",
        ["GET"],
        ChannelSocket,
        name="rt:ws",
        websocket=WebSocketRoute({"concurrent": False}),
    )
    # The publish API authenticates with its API key, not cookies: no XSRF token applies.
    for path, endpoint, name in (
        ("publish", publish_endpoint, "rt:publish"),
        ("publish/batch", publish_batch_endpoint, "rt:publish_batch"),
    ):
        router.add(f"{prefix}/{path}", ["POST"], endpoint, name=name, xsrf_exempt=True)
    # Clients without a WebSocket: Server-Sent Events, long polling, history, publish.
    router.add(f"{prefix}/sse", ["GET"], sse_endpoint, name="rt:sse")
    router.add(f"{prefix}/poll", ["GET"], poll_endpoint, name="rt:poll")
    router.add(f"{prefix}/history", ["GET"], history_endpoint, name="rt:history")
    router.add(f"{prefix}/presence", ["GET"], presence_endpoint, name="rt:presence")
    # Authenticated by a bearer token (or anonymous), and only JSON bodies are taken, which a
    # cross-site form cannot send: no XSRF token applies.
    router.add(
        f"{prefix}/client/publish",
        ["POST", "OPTIONS"],
        client_publish_endpoint,
        name="rt:client_publish",
        xsrf_exempt=True,
    )
    # The browser client of these endpoints, for every app with channels.
    router.add("/rtserve.js", ["GET"], rtserve_js, name="rt:js")


__all__ = [
    "Channels",
    "add_channel_routes",
    "channel_rules",
    "channels_of",
    "hub_of",
    "merged_settings",
]
