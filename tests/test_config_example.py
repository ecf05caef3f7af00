"""config.example.yaml and docs/configuration.md come from the schema, show every key with the
default the code uses, and the example loads as a project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rtserve.config.loader import schema_keys
from rtserve.config.project import ProjectConfig, RouteConfig, build_app, load_project
from rtserve.config.reference import EXAMPLE_PROJECT, EXAMPLES, render_example, render_reference
from rtserve.realtime.component import channels_of
from rtserve.realtime.rules import ChannelRule
from rtserve.server.settings import ServerSettings, settings_keys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and (prefix + key) not in ("routes", "channels.rules"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_example_and_reference_are_written_from_the_schema() -> None:
    fix = "run: python -m rtserve.config.reference"
    assert EXAMPLE.read_text() == render_example(), fix
    assert (ROOT / "docs" / "configuration.md").read_text() == render_reference(), fix


def test_example_covers_every_key() -> None:
    shown = flatten(yaml.safe_load(EXAMPLE.read_text()))
    for key in list(shown):
        if key in EXAMPLES:
            for item in shown.pop(key):
                shown.update({f"{key}.{name}": value for name, value in item.items()})
    expected = {k.key for k in schema_keys(ProjectConfig) if k.key not in EXAMPLES}
    expected |= {f"routes.{k.key}" for k in schema_keys(RouteConfig)}
    expected |= {f"channels.rules.{k.key}" for k in schema_keys(ChannelRule)}
    assert set(shown) == expected


def test_example_shows_the_server_defaults() -> None:
    server = flatten(yaml.safe_load(EXAMPLE.read_text())["server"])
    assert list(server) == settings_keys(ServerSettings)
    defaults = ServerSettings()
    for key, value in server.items():
        actual: Any = defaults
        for part in key.split("."):
            actual = getattr(actual, part)
        assert value == actual, key


def test_example_loads_as_a_project(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "rtserve.yaml").write_text(EXAMPLE.read_text())
    (tmp_path / "example_app.py").write_text(EXAMPLE_PROJECT)
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<p>hi</p>")
    text = EXAMPLE.read_text().replace(" app:", " example_app:")
    (tmp_path / "rtserve.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    config, folder = load_project(tmp_path)
    app = build_app(config, folder)
    assert channels_of(app).hub.rules.match("chat:lobby") is not None
    assert [r.kind for r in config.routes] == [
        "static",
        "static",
        "handler",
        "websocket",
        "redirect",
        "asgi",
        "wsgi",
    ]
