"""rtserve channels for bench/filters.py: one channel whose subscribers filter by tag, or many
channels, one per group.

`one` is the filtered channel; `many:{group}` the separate channels; both keep a history, for
the bench's check of recovery after a cut. `POST
/publish?mode=filtered|channels&start=I&count=K&groups=G&size=S` publishes K messages of S
bytes from the server, publications I to I + K - 1, publication i (its data starts with i in
ten digits) to group i % G: on `one` tagged `{"group": "<i % G>"}`, or on `many:<i % G>`
untagged; it answers once all are published. `GET /count` says how many
subscribers the channels have in all. Compression and keepalive pings are off, as in the other
benchmarks; the listen backlog is 4096.
"""

from __future__ import annotations

from rtserve import App, Request, ServerSettings
from rtserve.server.settings import WebSocketSettings

app = App(
    ServerSettings(
        access_log=False,
        backlog=4096,
        websocket=WebSocketSettings(compression=False, ping_interval=0),
    )
)
HISTORY = 10000  # publications kept per channel: the bench's second phase must fit
app.channel("one", history=HISTORY, history_ttl=3600)
app.channel("many:{group}", history=HISTORY, history_ttl=3600)


@app.route("/publish", methods=["POST"])
async def publish(request: Request) -> dict[str, int]:
    filtered = request.query.get("mode") == "filtered"
    start = int(request.query.get("start") or 0)
    count = int(request.query.get("count") or 1)
    groups = int(request.query.get("groups") or 1)
    pad = "x" * int(request.query.get("size") or 100)
    for seq in range(start, start + count):
        group = str(seq % groups)
        data = f"{seq:010d}:{pad}"
        if filtered:
            await app.publish("one", data, tags={"group": group})
        else:
            await app.publish(f"many:{group}", data)
    return {"count": count}


@app.route("/count")
def subscribers(request: Request) -> str:
    return str(sum(app.hub.channels().values()))
