"""The layers contract (.importlinter): no layer imports one above it; realtime sits above app."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


def test_no_layer_imports_one_above_it() -> None:
    # The virtualenv's own, when the tests run without it activated.
    beside = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    lint_imports = beside or require_tool("lint-imports")
    done = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
