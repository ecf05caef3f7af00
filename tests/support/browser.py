"""Steps in a headless Chromium page (Playwright) shared by the browser tests."""

from __future__ import annotations

import contextlib
from typing import Any

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import expect


def join(page: Any, url: str, name: str, timeout: float = 5000) -> None:
    """Open the chat scaffold at `url` and join room lobby as `name`; wait until it may send."""
    page.goto(url)
    page.fill("#name", name)
    page.fill("#room", "lobby")
    page.locator("#join").evaluate("form => form.requestSubmit()")
    expect(page.locator("#text")).to_be_enabled(timeout=timeout)
