"""Find the App a `module:attribute` (or `path/to/file.py:attribute`) target names: an rtserve
App, a factory of one, or an ASGI app (FastAPI, Django's `myproject.asgi:application`) that an
App then serves whole, with its channels beside it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from rtserve.asgi import is_asgi_app
from rtserve.errors import ConfigError
from rtserve.realtime.application import App


def load_app(target: str, *, cwd: str | None = None) -> Any:
    """Import the object `target` points at; ConfigError saying what is wrong otherwise.

    `module:attr` imports a module (the working directory is importable); `file.py:attr`
    loads a file; the attribute defaults to `app`. An ASGI app comes back mounted at the
    root of a new App.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    base = cwd or os.getcwd()
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        if module_name.endswith(".py"):
            path = os.path.join(base, module_name)
            spec = importlib.util.spec_from_file_location(
                os.path.splitext(os.path.basename(path))[0], path
            )
            if spec is None or spec.loader is None or not os.path.exists(path):
                raise ConfigError(f"no such file {module_name!r}", where=target)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import module {module_name!r}", where=target) from exc
        raise
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attribute!r}", where=target
            ) from None
    if is_asgi_app(obj):
        return _hosting(obj)
    if callable(obj) and not hasattr(obj, "dispatch"):
        obj = obj()  # an app factory
    if not hasattr(obj, "dispatch"):
        raise ConfigError(f"{attribute!r} is not an rtserve App", where=target)
    return obj


def _hosting(asgi_app: Any) -> App:
    """A new App serving `asgi_app` as the whole site (its own routes: the channels')."""
    app = App()
    app.mount("", asgi_app)
    return app
