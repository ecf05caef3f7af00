"""The server options of `rtserve run`, made from the settings schema (names, types, help).

`--port` is `server.port`, `--tls-cert` is `server.tls.cert`: each option is a key of
`ServerSettings` whose type and help come from the dataclass, so the CLI, the YAML and the
reference cannot disagree.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from rtserve.schema import PORT_RANGE
from rtserve.server.settings import ServerSettings

F = TypeVar("F", bound=Callable[..., Any])

RUN_SETTINGS = (
    "host",
    "port",
    "unix_socket",
    "fd",
    "reuse_port",
    "workers",
    "access_log",
    "debug",
    "tls.cert",
    "tls.key",
)


def _field(key: str) -> tuple[dataclasses.Field[Any], Any]:
    """The dataclass field of a dotted settings key, and its resolved type."""
    schema: Any = ServerSettings
    *sections, name = key.split(".")
    for section in sections:
        schema = typing.get_type_hints(schema)[section]
    found = {f.name: f for f in dataclasses.fields(schema)}[name]
    return found, typing.get_type_hints(schema)[name]


def param_name(key: str) -> str:
    return key.replace(".", "_")


def _option(key: str) -> Callable[[F], F]:
    found, tp = _field(key)
    flag = "--" + key.replace(".", "-").replace("_", "-")
    help_text = str(found.metadata.get("help", ""))
    members = set(typing.get_args(tp)) or {tp}
    if tp is bool:
        return click.option(
            f"{flag}/--no-{flag[2:]}", param_name(key), default=None, help=help_text
        )
    if list in {typing.get_origin(m) for m in members}:  # host: repeat for several
        return click.option(
            flag, param_name(key), multiple=True, help=f"{help_text} (repeat for several)"
        )
    kind: Any = int if int in members else str
    if found.metadata.get("port"):
        kind = click.IntRange(*PORT_RANGE)
    return click.option(flag, param_name(key), type=kind, default=None, help=help_text)


def server_options(func: F) -> F:
    """Add an option for each key of RUN_SETTINGS to a click command."""
    for key in reversed(RUN_SETTINGS):
        func = _option(key)(func)
    return func


def apply_options(base: ServerSettings, options: Mapping[str, Any]) -> ServerSettings:
    """A copy of `base` with the options given (not None, not empty) applied."""
    settings = dataclasses.replace(base)
    for key in RUN_SETTINGS:
        value = options.get(param_name(key))
        if value is None or value == () or value == []:
            continue
        if isinstance(value, (tuple, list)):
            value = list(value) if len(value) > 1 else value[0]
        *sections, name = key.split(".")
        if sections:
            section = sections[0]
            setattr(
                settings, section, dataclasses.replace(getattr(settings, section), **{name: value})
            )
        else:
            setattr(settings, name, value)
    return settings
