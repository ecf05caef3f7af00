"""Shared fixtures: apps served on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))


def require_tool(name: str) -> str:
    """Path of an external tool; skip (or fail in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


CHROMIUM = "/usr/bin/chromium"


def require_chromium() -> str:
    """Debian's Chromium, for Playwright to drive; skip (or fail in CI) when either is missing."""
    if importlib.util.find_spec("playwright") is None:
        reason = "Playwright is not installed (pip install -e '.[dev]'; never `playwright install`)"
    elif shutil.which(CHROMIUM) is None:
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    else:
        return CHROMIUM
    if IN_CI:
        pytest.fail(f"{reason}, and browser tests are required in CI")
    pytest.skip(reason)
