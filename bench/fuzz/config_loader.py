"""Fuzz the config loader: random YAML text, and byte mutations of config.example.yaml.

`load_mapping(text, ProjectConfig)` must return or raise ConfigErrors (each issue placed in
the file, with a line, unless it is about the source as a whole). Anything else is a crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["rtserve"]):
    from rtserve import imports
    from rtserve.config.loader import ConfigErrors, load_mapping
    from rtserve.config.project import ProjectConfig

import types  # noqa: E402

from _harness import main  # noqa: E402

EXAMPLE = (ROOT / "config.example.yaml").read_bytes()
ENV = {"PORT": "8080", "SECRET": "s" * 32}


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: lambda *a, **k: None  # type: ignore[method-assign]
    return module


_STUBS = {"app": _stub_module("app")}


def _import_module(name: str, package: str | None = None) -> types.ModuleType:
    """Never import what a fuzzed `module:name` reference says: only the stub `app` exists."""
    if name in _STUBS:
        return _STUBS[name]
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)


imports.importlib = types.SimpleNamespace(import_module=_import_module)  # type: ignore[assignment]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    else:
        doc = bytearray(EXAMPLE)
        for _ in range(fdp.ConsumeIntInRange(1, 6)):
            pos = fdp.ConsumeIntInRange(0, len(doc) - 1)
            cut = fdp.ConsumeIntInRange(0, 16)
            doc[pos : pos + cut] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        text = doc.decode("utf-8", "replace")
    try:
        load_mapping(text, ProjectConfig, env=ENV, filename="rtserve.yaml")
    except ConfigErrors as exc:
        assert exc.issues, "ConfigErrors without issues"
        for issue in exc.issues:
            assert issue.file == "rtserve.yaml"
            assert issue.line is not None or "nested too deeply" in issue.message, str(issue)


if __name__ == "__main__":
    main(test_one_input)
