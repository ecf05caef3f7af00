"""Fields of the settings dataclasses: each carries its help (and units, or how to import it),
so the YAML loader, `rtserve run`'s options and the configuration reference read one schema."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import Any

from rtserve.errors import RtserveError
from rtserve.imports import import_object

PORT_RANGE = (0, 65535)


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A setting with a default; `extra` marks units (`size=True`, `duration=True`) and
    ranges (`port=True`: an int in PORT_RANGE)."""
    return field(default=default, metadata={"help": help, **extra})


def opt_list(help: str, factory: Callable[[], Any] = list) -> Any:
    """A setting whose default is a fresh container (a list unless `factory` says)."""
    return field(default_factory=factory, metadata={"help": help})


def ref(help: str, convert: Callable[[str], Any] = import_object) -> Any:
    """A callable or class: given directly in Python, as `module:name` in rtserve.yaml
    (imported when the project loads by `convert`, `import_object` or one that checks what
    it found too)."""
    return field(default=None, metadata={"help": help, "convert": convert, "reference": True})


class OptionError(RtserveError, ValueError):
    """A value of one option that cannot be accepted (raised by a settings class as it is made):
    the config loader reports it where that option is written."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def check_ranges(settings: Any) -> None:
    """Raise OptionError for a value out of its field's range (`port=True`), in `settings` and
    the settings dataclasses it holds: what rtserve.yaml's loader refuses, refused when the
    values were set from Python."""
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value)
        elif item.metadata.get("port") and isinstance(value, int):
            if not PORT_RANGE[0] <= value <= PORT_RANGE[1]:
                raise OptionError(
                    item.name,
                    f"{item.name}: expected a port ({PORT_RANGE[0]} to {PORT_RANGE[1]}),"
                    f" got {value}",
                )
