"""What running an `async def` handler's first step costs, against calling a `def` handler.

From a uvloop callback (as `data_received` runs), N calls of each kind, counted with
`valgrind --tool=callgrind` for N and for 0; the difference over N is the figure. Kinds:

- ``def``: a `def` handler returning a str, called;
- ``async``: an `async def` handler returning a str, run by `rtserve.app.eager.first_step`;
- ``ready``: an `async def` handler awaiting a future already done, run the same way.

Instruction counts do not change with the load on the machine, so two commits can be compared
on a shared one: ``--repo`` imports rtserve from another checkout (a "before").

Usage:
    python bench/first_step_cost.py                       # this checkout, every kind
    python bench/first_step_cost.py --repo /tmp/before    # another checkout's rtserve
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("def", "async", "ready")


def run_calls(kind: str, n: int) -> None:
    """Make `n` calls of `kind` from one loop callback."""
    import uvloop

    from rtserve.app.eager import first_step

    def plain(request: object) -> str:
        return "Hello, World!"

    async def returning(request: object) -> str:
        return "Hello, World!"

    async def awaiting(ready: asyncio.Future[str]) -> str:
        return await ready

    def calls(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        ready: asyncio.Future[str] = loop.create_future()
        ready.set_result("Hello, World!")
        for _ in range(n):
            if kind == "def":
                plain(None)
            elif kind == "async":
                first_step(returning(None), loop)
            else:
                first_step(awaiting(ready), loop)
        done.set_result(None)

    loop = uvloop.new_event_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(calls, loop, done)
    loop.run_until_complete(done)
    loop.close()


def instructions(kind: str, n: int, repo: Path) -> int:
    """callgrind's instruction count of this script making `n` calls of `kind`."""
    command: list[Any] = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, __file__, "--run", kind, "--calls", str(n), "--repo", str(repo)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--calls", type=int, default=200_000, help="calls per count")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout to import")
    parser.add_argument("--run", metavar="KIND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bench_dir = str(REPO_ROOT / "bench")  # its http.py must not shadow `http`
    sys.path[:] = [str(args.repo.resolve())] + [p for p in sys.path if p != bench_dir]
    if args.run:
        run_calls(args.run, args.calls)
        return 0
    print(f"rtserve from {args.repo.resolve()}")
    print(f"| kind | instructions per call (callgrind, {args.calls:,} calls minus 0) |")
    print("| --- | ---: |")
    for kind in args.kinds.split(","):
        cost = instructions(kind, args.calls, args.repo) - instructions(kind, 0, args.repo)
        print(f"| `{kind}` | {cost / args.calls:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
