"""config.example.yaml shows every server setting, with the default the code uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rtserve.server.settings import ServerSettings, settings_keys

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_example_covers_every_server_setting_with_its_default() -> None:
    server = yaml.safe_load(EXAMPLE.read_text())["server"]
    shown = flatten(server)
    assert list(shown) == settings_keys(ServerSettings)
    defaults = ServerSettings()
    for key, value in shown.items():
        actual: Any = defaults
        for part in key.split("."):
            actual = getattr(actual, part)
        assert value == actual, key
