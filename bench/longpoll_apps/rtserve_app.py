"""rtserve's long polling as users configure it: one channel with history, `/rt/poll`.

`POST /publish` publishes its body on `lp`; `GET /pending` says how many polls wait on it.
With `RTSERVE_BENCH_GC=1` in its environment the server prints, at exit, the cyclic GC's
collections and CPU seconds per generation; with `RTSERVE_BENCH_NO_GC=1` as well, the GC is
off (to see its share of a release).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time

from rtserve import App, ChannelSettings, Request, ServerSettings

app = App(ServerSettings(access_log=False), channels=ChannelSettings(poll_timeout=60))
app.channel("lp", history=10)


@app.route("/publish", methods=["POST"])
async def publish(request: Request) -> dict[str, int]:
    return {"offset": (await app.publish("lp", await request.json())).offset}


@app.route("/pending")
def pending(request: Request) -> str:
    return str(app.hub.subscriber_count("lp"))


if os.environ.get("RTSERVE_BENCH_GC"):  # report the cyclic GC's collections at exit
    gc_seconds = [0.0, 0.0, 0.0]
    gc_runs = [0, 0, 0]
    gc_started = [0.0]

    def _gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.process_time()
        else:
            gc_seconds[info["generation"]] += time.process_time() - gc_started[0]
            gc_runs[info["generation"]] += 1

    gc.callbacks.append(_gc_timer)
    if os.environ.get("RTSERVE_BENCH_NO_GC"):  # to see what the GC's share is
        gc.disable()
    atexit.register(
        lambda: print(
            f"gc: collections per generation {gc_runs}, CPU s {[round(s, 3) for s in gc_seconds]}",
            file=sys.stderr,
        )
    )
