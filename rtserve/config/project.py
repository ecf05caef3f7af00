"""A project: `rtserve.yaml` beside Python modules, loaded into one typed `ProjectConfig` and
built into an App.

The dataclasses here (with `ServerSettings`, `ChannelSettings` and `ChannelRule`) are the one
schema: the loader, `rtserve check`, `config.example.yaml` and the configuration reference all
come from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rtserve.app.app import App as CoreApp
from rtserve.app.response import RedirectResponse
from rtserve.app.router import Router
from rtserve.app.static import header_list
from rtserve.asgi import HostedApp
from rtserve.asgi.mount import DEFAULT_WSGI_THREADS, METHODS
from rtserve.broker.url import broker_from_url, checked_broker_url
from rtserve.config.hosted import asgi_reference, wsgi_reference
from rtserve.config.loader import ConfigErrors, ConfigIssue, load_file
from rtserve.config.units import parse_duration, parse_size
from rtserve.errors import RouteError
from rtserve.imports import where_raised
from rtserve.realtime.application import App
from rtserve.realtime.component import Channels, merged_settings
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.realtime.settings import ChannelSettings
from rtserve.schema import opt, opt_list, ref
from rtserve.server.settings import ServerSettings, WebSocketSettings
from rtserve.stats.admin import DEFAULT_SOCKET, check_options, enable_admin

CONFIG_NAME = "rtserve.yaml"
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ROUTE_KINDS = ("handler", "websocket", "static", "redirect", "asgi", "wsgi")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(slots=True)
class RouteConfig:
    """One route: exactly one of handler, websocket, static, redirect, asgi or wsgi."""

    path: str = field(metadata={"help": "URL path, with {name} parameters ('/hello/{name}')"})
    handler: Any = ref("function or Handler class that answers (module:name)")
    websocket: Any = ref("WebSocketHandler subclass (module:Name)")
    static: str | None = opt(None, "file or folder, relative to the project, served at path")
    redirect: str | None = opt(None, "answer with a redirect to this URL")
    asgi: Any = ref(
        "ASGI app (FastAPI, Starlette, Django) served at path and below", asgi_reference
    )
    wsgi: Any = ref("WSGI app (Flask, Django) served at path and below", wsgi_reference)
    threads: int = opt(DEFAULT_WSGI_THREADS, "threads of a wsgi route: its requests at once")
    status: int = opt(307, "status of a redirect (301, 302, 303, 307 or 308)")
    methods: list[str] = opt_list("HTTP methods of a handler route", lambda: ["GET"])
    name: str | None = opt(None, "route name for url_for")
    options: dict[str, Any] = opt_list(
        "WebSocket options of this route (max_message_size, ...)", dict
    )
    headers: dict[str, str] = opt_list(
        "response headers added to a static route's files (X-Frame-Options, ...)", dict
    )

    def __post_init__(self) -> None:
        kinds = [k for k in ROUTE_KINDS if getattr(self, k)]
        if len(kinds) != 1:
            given = " and ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a route needs exactly one of {', '.join(ROUTE_KINDS)} ({given} given)"
            )
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")
        if self.status not in REDIRECT_STATUSES:
            raise ValueError(f"status must be one of {REDIRECT_STATUSES}")
        self.methods = [m.upper() for m in self.methods]
        unknown = [m for m in self.methods if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method(s) {unknown}; use {', '.join(HTTP_METHODS)}")
        if self.options and not self.websocket:
            raise ValueError("options are for websocket routes")
        if self.threads != DEFAULT_WSGI_THREADS and not self.wsgi:
            raise ValueError("threads are for wsgi routes")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if (self.asgi or self.wsgi) and "{" in self.path:
            raise ValueError("an asgi or wsgi route's path takes no {parameters}")
        if self.headers and not self.static:
            raise ValueError("headers are for static routes (a handler sets its own)")
        header_list(self.headers)
        self.options = _websocket_options(self.options)

    @property
    def kind(self) -> str:
        return next(k for k in ROUTE_KINDS if getattr(self, k))


_WEBSOCKET_FIELDS = {f.name: f for f in dataclasses.fields(WebSocketSettings)}


def _websocket_options(options: dict[str, Any]) -> dict[str, Any]:
    """A route's WebSocket options, sizes and durations read as in `server.websocket`;
    ValueError names an unknown or unreadable one."""
    converted: dict[str, Any] = {}
    for name, value in options.items():
        found = _WEBSOCKET_FIELDS.get(name)
        if found is None and name != "subprotocols":
            known = ", ".join(sorted([*_WEBSOCKET_FIELDS, "subprotocols"]))
            raise ValueError(f"unknown WebSocket option {name!r} (known: {known})")
        try:
            if found is not None and found.metadata.get("size"):
                value = parse_size(value)
            elif found is not None and found.metadata.get("duration"):
                value = parse_duration(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"options.{name}: {exc}") from None
        converted[name] = value
    return converted


@dataclass(slots=True)
class ChannelsConfig(ChannelSettings):
    """The channel layer: its settings, the on_connect hook and the rules."""

    on_connect: Any = ref("accepts or refuses a connection (module:name)")
    rules: list[ChannelRule] = opt_list("channel rules, the first matching pattern wins")
    keys_given: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def settings(self) -> ChannelSettings:
        return ChannelSettings(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(ChannelSettings)}
        )


@dataclass(slots=True)
class LoggingConfig:
    """The live log on stderr."""

    level: Literal["debug", "info", "warning", "error"] = opt("info", "lowest level shown")


@dataclass(slots=True)
class AdminConfig:
    """The admin interface: stats, connections and channels of the running server."""

    enabled: bool = opt(True, "serve the admin interface while the project runs")
    socket: str | None = opt(
        DEFAULT_SOCKET, "unix socket, relative to the project (mode 0600, no token); null: none"
    )
    listen: str | None = opt(
        None, "also serve it over HTTP at host:port; beyond loopback a token is required"
    )
    token: str | None = opt(None, "Bearer token every HTTP admin request must send (16+ chars)")
    metrics: bool = opt(False, "serve Prometheus metrics at /metrics")

    def __post_init__(self) -> None:
        check_options(self.socket, self.listen, self.token, enabled=self.enabled)


@dataclass(slots=True)
class ProjectConfig:
    """Everything `rtserve.yaml` holds."""

    app: Any = ref("a Python App (or factory) the YAML adds to (module:name); optional")
    server: ServerSettings = field(
        default_factory=ServerSettings, metadata={"help": "the HTTP server"}
    )
    routes: list[RouteConfig] = opt_list("routes, in the order they are added")
    channels: ChannelsConfig = field(default_factory=ChannelsConfig, metadata={"help": "channels"})
    broker: str = opt(
        "memory",
        "the channel broker: 'memory' (one process), or a Redis URL for many workers and "
        "machines: redis://[:password@]host:port/db (rediss:// for TLS; ?prefix=NAME sets "
        "the key prefix), or redis+cluster://host:port[,host:port...] for a Redis Cluster "
        "(Redis >= 7)",
        convert=checked_broker_url,
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"help": "logging"})
    admin: AdminConfig = field(
        default_factory=AdminConfig,
        metadata={"help": "the admin interface (stats, connections, channels; Prometheus)"},
    )
    keys_given: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = _route_clashes(self.routes) + _pattern_clashes(self.channels.rules)
        if problems:
            raise ValueError("; ".join(problems))


def _route_clashes(routes: list[RouteConfig]) -> list[str]:
    router = Router()
    problems = []
    for i, route in enumerate(routes):
        pattern = route.path.rstrip("/") + "/{path:path}" if _is_folder(route) else route.path
        methods = route.methods if route.handler else ["GET"]
        if route.asgi or route.wsgi:
            pattern, methods = route.path.rstrip("/") + "/{path:path}", list(METHODS)
        try:
            router.add(pattern, methods, i)
        except RouteError as exc:
            problems.append(f"routes[{i}]: {exc}")
    return problems


def _pattern_clashes(rules: list[ChannelRule]) -> list[str]:
    seen = ChannelRules()
    problems = []
    for i, rule in enumerate(rules):
        try:
            seen.add(rule)
        except ValueError as exc:
            problems.append(f"channels.rules[{i}]: {exc}")
    return problems


def _is_folder(route: RouteConfig) -> bool:
    return bool(route.static) and (route.static or "").endswith("/")


def find_config(path: str | Path | None = None) -> Path:
    """The rtserve.yaml of `path` (a project folder or the file itself; default: here)."""
    candidate = Path(path) if path is not None else Path.cwd()
    if candidate.is_dir():
        candidate = candidate / CONFIG_NAME
    return candidate


def load_project(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> tuple[ProjectConfig, Path]:
    """Load and validate a project's rtserve.yaml; the config and the project folder.

    Raises ConfigErrors listing every problem (file:line:column: key: message). The project
    folder goes first on sys.path so `module:name` references import its modules.
    """
    config_file = find_config(path)
    folder = config_file.resolve().parent
    with contextlib.suppress(ValueError):  # errors name the file relative to where one is
        config_file = config_file.resolve().relative_to(Path.cwd())
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    config = load_file(config_file, ProjectConfig, env=env)
    static_problems = [
        ConfigIssue(
            str(config_file), None, None, f"routes[{i}].static", f"no such path {r.static!r}"
        )
        for i, r in enumerate(config.routes)
        if r.static and not (folder / r.static).exists()
    ]
    if static_problems:
        raise ConfigErrors(static_problems)
    return config, folder


def _call_factory(target: Any, folder: Path) -> Any:
    """What the `app:` factory returns (a non-callable is returned as it is); its exception
    as a ConfigErrors naming the line of the project's code that raised it."""
    if not callable(target):
        return target
    try:
        return target()
    except Exception as exc:
        name = getattr(target, "__qualname__", repr(target))
        message = f"{name}() failed: {where_raised(exc, folder)}"
        raise ConfigErrors(
            [ConfigIssue(str(folder / CONFIG_NAME), None, None, "app", message)]
        ) from None


def build_app(config: ProjectConfig, folder: Path) -> CoreApp:
    """The App a project describes: its `app` (or a new one) with the YAML's settings, routes
    and channels added."""
    target = config.app
    app: CoreApp
    if target is None:
        app = App(config.server)
    else:
        app = _call_factory(target, folder) if not isinstance(target, CoreApp) else target
        if not isinstance(app, CoreApp):
            raise ConfigErrors(
                [
                    ConfigIssue(
                        str(folder / CONFIG_NAME), None, None, "app", f"{target!r} is not an App"
                    )
                ]
            )
        app.settings = config.server
    _mount_channels(app, config)
    for route in config.routes:
        _add_route(app, route, folder)
    admin = config.admin
    if admin.enabled:
        enable_admin(
            app,
            socket=None if admin.socket is None else folder / admin.socket,
            listen=admin.listen,
            token=admin.token,
            metrics=admin.metrics,
        )
    app.finalize()
    return app


def _mount_channels(app: CoreApp, config: ProjectConfig) -> None:
    """Give `app` the channels the code set merged with rtserve.yaml's (a key the YAML sets
    wins; a `broker:` it sets replaces the code's); none if neither asks for channels."""
    section = config.channels
    channels = app.component(Channels)
    if channels is None:
        if not (section.rules or section.on_connect is not None or section.keys_given):
            return  # no channels: no broker either
        if isinstance(app, App):
            channels = app.channels
        else:
            channels = Channels()
            app.mount(channels)
    broker = broker_from_url(config.broker) if "broker" in config.keys_given else None
    settings = merged_settings(channels.settings, section.settings(), section.keys_given)
    channels.configure(settings=settings, broker=broker)
    if section.on_connect is not None:
        channels.hub.on_connect = section.on_connect
    for rule in section.rules:
        channels.add_rule(rule)


def _add_route(app: CoreApp, route: RouteConfig, folder: Path) -> None:
    if route.asgi is not None:
        app.mount(HostedApp(route.path, route.asgi, interface="asgi"))
    elif route.wsgi is not None:
        app.mount(HostedApp(route.path, route.wsgi, interface="wsgi", threads=route.threads))
    elif route.handler is not None:
        app.add_route(route.path, route.handler, route.methods, name=route.name)
    elif route.websocket is not None:
        app.websocket(route.path, name=route.name, **route.options)(route.websocket)
    elif route.static is not None:
        target = folder / route.static
        if target.is_dir():
            app.static(route.path, target, name=route.name, headers=route.headers)
        else:
            app.static_file(route.path, target, name=route.name, headers=route.headers)
    else:
        url, status = route.redirect, route.status

        def redirect(request: Any, **params: Any) -> RedirectResponse:
            return RedirectResponse((url or "/").format(**params), status=status)

        app.add_route(route.path, redirect, ["GET", "HEAD"], name=route.name)
