"""Shared fixtures: apps served on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["tests.redis_support", "tests.brokers"]

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


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BROWSER_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's) via Playwright; `browser_type.launch` gives it a fresh
    temporary profile and removes it at exit."""
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in its own browser context (cookies and storage of its own)."""
    context = browser.new_context()
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
