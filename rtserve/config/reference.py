"""config.example.yaml and docs/configuration.md, written from the schema.

`python -m rtserve.config.reference` rewrites both; a test checks they are up to date, so the
example and the reference never drift from the dataclasses.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from rtserve.config.project import ProjectConfig
from rtserve.config.schema_types import field_types, init_fields, is_dataclass_type
from rtserve.imports import import_object

HEADER = """\
# rtserve.yaml: every key rtserve knows, with its default and what it does.
# Written from the schema by `python -m rtserve.config.reference`; do not edit by hand.
# Values may use ${VAR} and ${VAR:-default} from the environment or a .env file beside this
# one; sizes take units (64KiB, 1MiB, 1MB) and durations too (250ms, 10s, 5m, 1h).
"""

# List sections are shown with examples (their items have no defaults to show).
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "routes": [
        {"path": "/", "static": "static/index.html", "headers": {"X-Frame-Options": "DENY"}},
        {"path": "/static", "static": "static/"},
        {"path": "/hello/{name}", "handler": "app:hello", "methods": ["GET"], "name": "hello"},
        {"path": "/ws/echo", "websocket": "app:Echo", "options": {"max_message_size": "1MiB"}},
        {"path": "/old", "redirect": "/", "status": 308},
        {"path": "/api", "asgi": "app:api"},
        {"path": "/legacy", "wsgi": "app:legacy", "threads": 10},
    ],
    "channels.rules": [
        {
            "pattern": "chat:{room}",
            "history": 100,
            "history_ttl": "10m",
            "presence": True,
            "join_leave": True,
            "presence_digest": 100,
            "publish": "clients",
            "token": False,
            "max_message_size": "4KiB",
            "publish_rate": 5,
            "publish_burst": 10,
            "max_subscribers": 0,
            "slow_consumer": "drop_oldest",
            "max_pending": 1000,
            "conflate_key": None,
            "filters": False,
            "filter_max_size": "1KiB",
            "max_filters": 1000,
            "on_subscribe": "app:may_join",
            "on_publish": "app:store_message",
            "on_join": None,
            "on_leave": None,
        },
        {
            "pattern": "metrics:*",
            "publish": "server",
            "slow_consumer": "conflate",
            "filter_max_size": "2KiB",
        },
        {"pattern": "dashboard:*", "history": 10, "delta": "fossil"},
    ],
}
EXAMPLE_PROJECT = '''\
"""The module config.example.yaml names, so the example can be loaded as it is."""

from rtserve import App, WebSocketHandler

app = App()


async def hello(request, name):
    return {"hello": name}


class Echo(WebSocketHandler):
    def on_message(self, message):
        self.send(message)


def authenticate(ctx):
    return None


def may_join(ctx):
    return None


def store_message(ctx):
    return None


async def api(scope, receive, send):  # an ASGI app: FastAPI, Starlette, Django's
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"from the ASGI app"})


def legacy(environ, start_response):  # a WSGI app: Flask, Django's
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"from the WSGI app"]
'''


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _help(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


def _aligned(pairs: list[tuple[str, str]]) -> list[str]:
    """`left  # comment` lines with the comments of one block in one column."""
    width = min(max((len(left) for left, _ in pairs), default=0), 48)
    return [f"{left.ljust(width)}  # {comment}" if comment else left for left, comment in pairs]


def _lines(schema: type[Any], indent: int, prefix: str) -> list[str]:
    out: list[str] = []
    block: list[tuple[str, str]] = []
    hints = field_types(schema)
    pad = " " * indent
    for f in init_fields(schema):
        key = prefix + f.name
        tp = hints[f.name]
        if is_dataclass_type(tp) or key in EXAMPLES:
            out += _aligned(block)
            block = []
            out.append(f"{pad}{f.name}:  # {_help(f)}")
            if key in EXAMPLES:
                out.extend(_items(typing.get_args(tp)[0], EXAMPLES[key], indent + 2))
            else:
                out.extend(_lines(tp, indent + 2, key + "."))
        else:
            block.append((f"{pad}{f.name}: {_scalar(_default(f))}", _help(f)))
    return out + _aligned(block)


def _items(item_type: type[Any], items: list[dict[str, Any]], indent: int) -> list[str]:
    helps = {f.name: _help(f) for f in init_fields(item_type)}
    out: list[str] = []
    for item in items:
        pairs = [
            (" " * indent + ("- " if i == 0 else "  ") + f"{name}: {_scalar(value)}", helps[name])
            for i, (name, value) in enumerate(item.items())
        ]
        out += _aligned(pairs)
    return out


def render_example() -> str:
    """config.example.yaml: every key, defaults shown, list sections by example."""
    return HEADER + "\n".join(_lines(ProjectConfig, 0, "")) + "\n"


def render_reference() -> str:
    """docs/configuration.md: one table per section."""
    out = [
        "# Configuration reference",
        "",
        "Every key of `rtserve.yaml`, written from the schema by",
        "`python -m rtserve.config.reference` (a test checks it is current). See",
        "[config.example.yaml](../config.example.yaml) for all of them in one file, and",
        "[projects.md](projects.md) for how a project is laid out and loaded.",
        "",
        "Sizes take units (`64KiB`, `1MiB`, `1MB`), durations too (`250ms`, `10s`, `5m`,",
        "`1h`); `${VAR}` and `${VAR:-default}` come from the environment or a `.env` file.",
        "References (`module:name`) are imported from the project folder when it loads.",
    ]
    _tables(ProjectConfig, "", out)
    return "\n".join(out) + "\n"


def _tables(schema: type[Any], prefix: str, out: list[str]) -> None:
    hints = field_types(schema)
    rows: list[str] = []
    nested: list[tuple[str, type[Any]]] = []
    for f in init_fields(schema):
        tp = hints[f.name]
        key = prefix + f.name
        if is_dataclass_type(tp):
            nested.append((key, tp))
            continue
        args = typing.get_args(tp)
        if key in EXAMPLES and args and is_dataclass_type(args[0]):
            nested.append((key + "[]", args[0]))
            continue
        default = (
            "required"
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            else f"`{_scalar(_default(f))}`"
        )
        kind = _kind(tp, f)
        rows.append(f"| `{f.name}` | {kind} | {default} | {_help(f)} |")
    if rows:
        out += ["", f"## `{prefix.rstrip('.') or '(top level)'}`", ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows]
    for key, tp in nested:
        _tables(tp, key + ".", out)


def _kind(tp: Any, f: dataclasses.Field[Any]) -> str:
    if f.metadata.get("reference") or f.metadata.get("convert") is import_object:
        return "reference"
    if f.metadata.get("size"):
        return "size"
    if f.metadata.get("duration"):
        return "duration"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(f"`{c}`" for c in typing.get_args(tp))
    text = str(tp).replace("typing.", "").replace("NoneType", "null").replace("None", "null")
    for name in ("int", "float", "bool", "str"):
        text = text.replace(f"<class '{name}'>", name)
    return text.replace("|", "or")


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    (root / "config.example.yaml").write_text(render_example())
    (root / "docs" / "configuration.md").write_text(render_reference())
    print("wrote config.example.yaml and docs/configuration.md", file=sys.stderr)


if __name__ == "__main__":
    main()
