"""The hosted-app route kinds of rtserve.yaml, `asgi:` and `wsgi:`: their references are
imported and checked to be the kind of app the key says (errors are the loader's, at the
value's file:line:col)."""

from __future__ import annotations

from typing import Any

from rtserve.asgi import is_asgi_app
from rtserve.imports import import_object


def asgi_reference(reference: str) -> Any:
    """The ASGI app `module:name` names; ValueError if it is something else."""
    app = import_object(reference)
    if not is_asgi_app(app):
        hint = " (a WSGI app? use wsgi:)" if callable(app) else ""
        raise ValueError(
            f"{reference!r} is not an ASGI app: an async function (scope, receive, send) or an "
            f"object with an async __call__{hint}"
        )
    return app


def wsgi_reference(reference: str) -> Any:
    """The WSGI app `module:name` names; ValueError if it is something else."""
    app = import_object(reference)
    if is_asgi_app(app):
        raise ValueError(f"{reference!r} is an ASGI app: use asgi:")
    if not callable(app):
        raise ValueError(f"{reference!r} is not a WSGI app (environ, start_response)")
    return app
