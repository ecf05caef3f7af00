"""The App that rtserve.yaml describes, as a Python object.

`rtserve run` in this folder reads rtserve.yaml itself; `rtserve run app.py:app` (or any
tool that wants an App object) gets the very same App from here.
"""

from __future__ import annotations

from pathlib import Path

from rtserve.config.project import build_app, load_project

app = build_app(*load_project(Path(__file__).resolve().parent))
