"""Price the release of N waiting long polls, in-process: figures other load does not move.

One process serves the long-poll bench app (``bench/longpoll_apps/rtserve_app.py``: one
channel with history, ``GET /rt/poll``) and holds N raw client sockets, each with one poll
waiting. A release is one ``app.publish`` (the memory broker delivers before it returns, so
every answer is written inside the call), made inside ``functools.reduce`` so that callgrind
can count it alone (``--toggle-collect=functools_reduce``). After each release every client
reads its answer, checks it carries the publication, and polls again from the position it
was given; the next release waits until all N are pending again.

Measures (``--measure``):

- ``cpu`` (default): user and system CPU time of the serving thread across each release
  (``getrusage(RUSAGE_THREAD)``), per answer; the system part is the ``send()`` per answer,
  which on loopback carries the receiving side's TCP work too; and the CPU time of the
  loop's next turns, where what the release left for later runs (after the last answer);
- ``callgrind``: the process runs under ``valgrind --tool=callgrind`` collecting only inside
  the releases: instructions per answer (user space: the Python part, and uvloop's); with
  ``--to-last-answer``, what the hub runs once the publication reached every subscriber (the
  released polls leaving, where the code has that hook) is moved to the loop's next turn, so
  the count stops at the last answer written;
- ``profile``: ``cProfile`` of the releases, the top functions by own time;
- ``opcodes``: the Python bytecodes each function runs in the releases (a trace hook);
- ``memory``: the Python heap per pending poll from ``tracemalloc`` (a snapshot of the idle
  server and one with N polls pending, both after ``gc.collect()``; the clients' own sockets
  are left out), by file.

    PYTHONPATH=. python bench/longpoll_release_cost.py --polls 10000 --rounds 5
    PYTHONPATH=. python bench/longpoll_release_cost.py --measure callgrind --polls 1000

Standard library only (and valgrind for ``callgrind``); traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import json
import os
import pstats
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)  # bench/http.py would shadow the stdlib

WAIT_S = 60.0
FIRST_POLL = "/rt/poll?channel=lp&timeout=55"


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _read_answer(sock: socket.socket) -> bytes:
    """One Content-Length answer (blocking, with the socket's timeout)."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].lower()
            match = re.search(rb"content-length: *(\d+)", head)
            if match is None:
                raise RuntimeError(f"no content-length: {head[:200]!r}")
            length = int(match.group(1))
            if len(data) >= end + 4 + length:
                return data[end + 4 : end + 4 + length]
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("closed before the answer")
        data += piece


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_S} s for {what}")
        await asyncio.sleep(0.002)


def _opcode_counter(counts: Counter[str]) -> Any:
    """A trace function counting the bytecodes each Python function runs."""

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
        return trace

    return trace


def _release(app: Any, seq: int) -> int:
    """Publish once; the memory broker's delivery (every answer) happens inside."""
    coro = app.publish("lp", {"seq": seq})
    try:
        coro.send(None)
    except StopIteration:
        return seq
    coro.close()
    raise RuntimeError("publish suspended: the release was not synchronous")


async def _main(polls: int, rounds: int, measure: str) -> dict[str, Any]:
    from bench.longpoll_apps.rtserve_app import app
    from rtserve.testing import serve_app

    result: dict[str, Any] = {
        "polls": polls,
        "rounds": rounds,
        "user": [],
        "sys": [],
        "cpu": [],
        "after": [],
    }
    async with serve_app(app, access_log=False) as server:
        hub = app.hub
        if os.environ.get("BENCH_LEAVE_LATER") and hasattr(hub, "_run_after_delivery"):
            # What runs once the publication reached every subscriber (the released polls
            # leaving), moved to the loop's next turn: the release measured to its last answer.
            leave_pass = hub._run_after_delivery

            def later() -> None:
                asyncio.get_running_loop().call_soon(leave_pass)

            hub._run_after_delivery = later  # type: ignore[method-assign]
        if measure == "memory":
            gc.collect()
            idle = tracemalloc.take_snapshot()
        socks: list[socket.socket] = []
        for i in range(polls):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
            sock.sendall(_request(FIRST_POLL))
            socks.append(sock)
            if i % 200 == 199:  # let the server accept and park them
                await _until(lambda n=i + 1: hub.subscriber_count("lp") == n, "polls pending")
        await _until(lambda: hub.subscriber_count("lp") == polls, "polls pending")
        if measure == "memory":
            gc.collect()
            pending = tracemalloc.take_snapshot()
            mine = (tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, "*/socket.py"))
            diff = pending.filter_traces(mine).compare_to(
                idle.filter_traces(mine), os.environ.get("BENCH_TRACE_BY", "filename")
            )
            result["heap_per_poll"] = sum(d.size_diff for d in diff) / polls
            result["by_file"] = [
                (str(d.traceback[0]), d.size_diff / polls) for d in diff[:20] if d.size_diff
            ]
        profile = cProfile.Profile() if measure == "profile" else None
        opcodes: Counter[str] = Counter()
        for seq in range(1, rounds + 1):
            gc.collect()  # a full collection mid-release would be noise here
            before = resource.getrusage(resource.RUSAGE_THREAD)
            started = time.thread_time()
            if profile is not None:
                profile.enable()
            if measure == "opcodes":
                sys.settrace(_opcode_counter(opcodes))
            functools.reduce(lambda _a, _b: _release(app, seq), (0, 1))
            sys.settrace(None)
            if profile is not None:
                profile.disable()
            cpu = time.thread_time() - started
            after = resource.getrusage(resource.RUSAGE_THREAD)
            result["cpu"].append(cpu / polls * 1e6)
            started = time.thread_time()
            for _ in range(3):  # what the release left for the loop's next turns
                await asyncio.sleep(0)
            result["after"].append((time.thread_time() - started) / polls * 1e6)
            result["user"].append((after.ru_utime - before.ru_utime) / polls * 1e6)
            result["sys"].append((after.ru_stime - before.ru_stime) / polls * 1e6)
            for sock in socks:
                answer = json.loads(_read_answer(sock))
                lp = answer["channels"]["lp"]
                if lp["publications"][-1]["data"]["seq"] != seq:
                    raise RuntimeError(f"round {seq}: an answer without the publication")
                sock.sendall(_request(f"{FIRST_POLL}&since=lp:{lp['offset']}:{lp['epoch']}"))
            await _until(lambda: hub.subscriber_count("lp") == polls, "polls pending again")
        for sock in socks:
            sock.close()
        if profile is not None:
            stats = pstats.Stats(profile, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
        if opcodes:
            answers = polls * rounds
            result["opcodes_per_answer"] = round(sum(opcodes.values()) / answers, 1)
            for name, count in opcodes.most_common(25):
                print(f"{count / answers:8.1f} {name}", file=sys.stderr)
    return result


def _run(polls: int, rounds: int, measure: str) -> dict[str, Any]:
    from rtserve.server.listener import new_event_loop

    if measure == "memory":
        tracemalloc.start()
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_main(polls, rounds, measure))
    finally:
        loop.close()


def _callgrind(polls: int, rounds: int, to_last_answer: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--measure",
            "child",
            "--polls",
            str(polls),
            "--rounds",
            str(rounds),
        ]
        env = {**os.environ, "BENCH_LEAVE_LATER": "1" if to_last_answer else ""}
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if match is None:
            raise SystemExit(f"no totals in {out}")
        return {"polls": polls, "rounds": rounds, "ir_per_answer": int(match[1]) / polls / rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--measure",
        choices=("cpu", "callgrind", "profile", "opcodes", "memory", "child"),
        default="cpu",
    )
    parser.add_argument(
        "--to-last-answer",
        action="store_true",
        help="callgrind: count up to the last answer (what runs after it: the next turn)",
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.polls + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.measure == "callgrind":
        print(_callgrind(args.polls, args.rounds, args.to_last_answer))
        return
    result = _run(args.polls, args.rounds, args.measure)
    if args.measure == "child":
        return
    user, system, cpu = result.pop("user"), result.pop("sys"), result.pop("cpu")
    after = result.pop("after")
    print(
        f"{args.polls} polls, {args.rounds} releases: per answer CPU "
        f"{statistics.median(cpu):.1f} µs (min {min(cpu):.1f}), of which user "
        f"{statistics.median(user):.1f} µs (min {min(user):.1f}), system "
        f"{statistics.median(system):.1f} µs (min {min(system):.1f})"
    )
    print(f"  CPU per release {[round(c, 1) for c in cpu]}")
    print(
        f"  then, in the loop's next turns (leaving the hub, ...): {statistics.median(after):.1f}"
        " µs per answer"
    )
    for key, value in result.items():
        if key not in ("polls", "rounds"):
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
