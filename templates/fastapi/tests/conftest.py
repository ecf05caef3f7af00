"""Fixtures for this project's tests.

`app` is the project's App, built from rtserve.yaml the way `rtserve run` builds it. rtserve's
pytest plugin (it comes with rtserve) serves it: `rtserve_server` is a live server on a free
port in a background thread, `rtserve_client` an HTTP client of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rtserve import App
from rtserve.config.project import build_app, load_project

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app() -> App:
    config, folder = load_project(PROJECT)
    return build_app(config, folder)
