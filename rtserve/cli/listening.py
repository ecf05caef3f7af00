"""Where `rtserve run`'s supervisor and workers listen: the project's `server` and `admin`
settings read without importing its Python, the sockets bound once by the supervisor, and a
worker's own SO_REUSEPORT sockets and admin socket when there are several."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from rtserve.server.settings import ServerSettings


def light_config(project: str) -> Any:
    """The project's YAML with `server` and `admin` read into their settings and every other
    section as plain data: without importing any of its Python (ConfigErrors when wrong)."""
    from rtserve.config.loader import load_file
    from rtserve.config.project import AdminConfig, ProjectConfig, find_config

    config_file = find_config(project)
    try:
        shown = config_file.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = config_file
    typed = {"server": ServerSettings, "admin": AdminConfig}
    schema = dataclasses.make_dataclass(
        "LightConfig",
        [
            (f.name, typed[f.name], field(default_factory=typed[f.name]))
            if f.name in typed
            else (f.name, Any, field(default=None))
            for f in dataclasses.fields(ProjectConfig)
        ],
    )
    return load_file(shown, schema)


def listen_settings(
    project: str, options: Mapping[str, Any]
) -> tuple[ServerSettings, list[Path], bool]:
    """The project's `server` settings with `run`'s options applied, its static paths, and
    whether several workers may serve it (a broker shared between processes, or no
    channels)."""
    from rtserve.broker.url import is_shared
    from rtserve.cli.options import apply_options
    from rtserve.config.project import find_config

    folder = find_config(project).resolve().parent
    light = light_config(project)
    static = []
    for route in light.routes or ():
        if isinstance(route, dict) and isinstance(route.get("static"), str):
            static.append((folder / route["static"]).resolve())
    # Workers may serve it when they share the broker, or when it has no channels at all (no
    # rules in the YAML and no `app:` that could add some in Python).
    channels = light.channels if isinstance(light.channels, dict) else {}
    no_channels = not channels.get("rules") and light.app is None
    shared = is_shared(light.broker) or no_channels
    return apply_options(light.server, options), static, shared


def admin_config(project: str | None, target: str | None, folder: Path) -> Any:
    """The admin settings (socket as an absolute path) of the project or app, or None when
    it has no admin interface."""
    from rtserve.config.project import AdminConfig

    if project is not None:
        config = light_config(project).admin
        if not config.enabled:
            return None
        socket_path = None if config.socket is None else str(folder / config.socket)
        return dataclasses.replace(config, socket=socket_path)
    from rtserve.cli.loader import load_app

    assert target is not None
    admin = load_app(target).admin
    if admin is None:
        return None
    socket_path = None if admin.socket_path is None else str(admin.socket_path)
    return AdminConfig(
        socket=socket_path, listen=admin.listen, token=admin.token, metrics=admin.metrics
    )


def listen_again(addresses: list[list[Any]], backlog: int) -> list[socket.socket]:
    """A worker's own listening sockets on the supervisor's addresses ([family, sockaddr]
    pairs), joined to the port with SO_REUSEPORT: the kernel spreads new connections over
    the workers evenly."""
    socks: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(tuple(address))
            sock.listen(backlog)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def worker_socket(folder: Path, index: int) -> Path:
    """Where worker `index` serves its own admin interface when there are several."""
    return folder / ".rtserve" / "workers" / f"{index}.sock"


def listen_key(settings: ServerSettings) -> tuple[Any, ...]:
    return (tuple(settings.hosts), settings.port, settings.unix_socket, settings.tls.enabled)


def bind(settings: ServerSettings, *, listen: bool = True) -> list[socket.socket]:
    """Listening sockets as the settings say (as `Server.start` would bind them); with
    `listen=False` bound only, holding the address for processes that bind it again with
    SO_REUSEPORT (`settings.reuse_port`)."""
    from rtserve.server.listener import _is_stale_socket

    if settings.unix_socket:
        path = settings.unix_socket
        if os.path.exists(path) and _is_stale_socket(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(settings.backlog)
        except OSError:
            sock.close()
            raise
        return [sock]
    socks: list[socket.socket] = []
    port = settings.port
    seen = set()
    try:
        for host in settings.hosts:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, kind, proto, _, address in infos:
                if (family, address[:2]) in seen:
                    continue
                seen.add((family, address[:2]))
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if settings.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(socks) > 1:  # one free port for every address
                    address = (address[0], socks[0].getsockname()[1], *address[2:])
                sock.bind(address)
                if listen:
                    sock.listen(settings.backlog)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks
