"""The layering rules of docs/architecture.md, checked on the source (parsed, not grepped).

Only rtserve/server/ touches a connection: the app layer answers through the `Exchange` (no
`exchange.conn`, no `exchange._transport`), and no module outside server/ reads a private
attribute of a connection (stats go through `Served.describe()`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtserve"
SERVER = PACKAGE / "server"
# Names a connection goes by outside server/ (the WebSocket client's own is not one of ours).
CONNECTION_NAMES = frozenset(("conn", "connection", "websocket", "ws"))
EXCHANGE_DOORS = frozenset(("conn", "_transport"))
CLIENT_MODULES = frozenset(("client/ws.py",))


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _outside_server() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if SERVER not in path.parents and path.relative_to(PACKAGE).as_posix() not in CLIENT_MODULES
    ]


def reaches(source: str) -> list[str]:
    """`line: expression` for each reach past the exchange or into a connection's privates."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        owner = _last_name(node.value)
        if owner is None:
            continue
        into_exchange = owner == "exchange" and node.attr in EXCHANGE_DOORS
        private = (
            owner in CONNECTION_NAMES
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        )
        if into_exchange or private:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def test_the_rule_sees_what_it_forbids() -> None:
    source = (
        "a = request.exchange.conn.state\n"
        "b = exchange._transport\n"
        "c = conn._app\n"
        "d = self.connection._out_bytes\n"
        "e = exchange.state\n"
        "f = conn.describe()\n"
        "g = conn.__class__\n"
    )
    assert reaches(source) == [
        "1: request.exchange.conn",
        "2: exchange._transport",
        "3: conn._app",
        "4: self.connection._out_bytes",
    ]


def test_nothing_outside_server_reaches_a_connection() -> None:
    modules = _outside_server()
    assert len(modules) > 20  # the walk found the package
    found = {
        path.relative_to(PACKAGE).as_posix(): hits
        for path in modules
        if (hits := reaches(path.read_text(encoding="utf-8")))
    }
    assert found == {}
