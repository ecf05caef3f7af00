"""Shared entry point for the atheris harnesses in this folder (see README.md).

Each harness is `python bench/fuzz/<name>.py [libFuzzer flags]`. Without `-runs=` or
`-max_total_time=` a run is bounded (100,000 inputs, 120 s at most), never endless. A crash is
any exception the target does not document: libFuzzer prints it and saves the input as
`crash-<sha1>` in the working directory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

DEFAULT_RUNS = 100_000
DEFAULT_SECONDS = 120


def main(test_one_input: Callable[[bytes], None]) -> None:
    import atheris

    argv = list(sys.argv)
    if not any(a.startswith(("-runs=", "-max_total_time=")) for a in argv[1:]):
        argv += [f"-runs={DEFAULT_RUNS}", f"-max_total_time={DEFAULT_SECONDS}"]
    if not any(a.startswith("-timeout=") for a in argv[1:]):
        argv.append("-timeout=5")  # one input taking 5 s is a hang: reported as a crash
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
