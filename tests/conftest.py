"""Shared fixtures: apps served on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

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
