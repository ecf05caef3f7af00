"""The App that rtserve.yaml describes, as a Python object.

`rtserve run` in this folder reads rtserve.yaml itself; `rtserve run app.py:app` (or any
tool that wants an App object) gets the very same App from here, with nothing repeated: add
routes and settings in rtserve.yaml and handlers in handlers.py.
"""

from __future__ import annotations

from pathlib import Path

from rtserve.config.project import build_app, load_project

app = build_app(*load_project(Path(__file__).resolve().parent))
