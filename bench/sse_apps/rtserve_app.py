"""rtserve channels for bench/sse.py and bench/reconnect_storm.py: one channel, two transports.

`bench` has no history (the fan-out of bench/sse.py); `storm` keeps 100 publications for an
hour (the recovery of bench/reconnect_storm.py). Both are reached over `/rt/sse` and `/rt/ws`.
`POST /publish?channel=C&count=K&size=S` publishes K messages of S bytes from the server, one
after the other, and answers once all are published; `GET /count?channel=C` says how many
subscribers C has. Compression and keepalive pings are off, the SSE heartbeat an hour apart,
as in the other benchmarks;
the listen backlog is 4096, as the storm's peers'.
"""

from __future__ import annotations

from rtserve import App, ChannelSettings, Request, ServerSettings
from rtserve.server.settings import WebSocketSettings

app = App(
    ServerSettings(
        access_log=False,
        backlog=4096,  # the storm's 5,000 connects at once (net.core.somaxconn caps it)
        websocket=WebSocketSettings(compression=False, ping_interval=0),
    ),
    channels=ChannelSettings(sse_heartbeat=3600),
)
app.channel("bench")
app.channel("storm", history=100, history_ttl=3600)


@app.route("/publish", methods=["POST"])
async def publish(request: Request) -> dict[str, int]:
    channel = request.query.get("channel") or "bench"
    count = int(request.query.get("count") or 1)
    pad = "x" * int(request.query.get("size") or 100)
    offset = 0
    for seq in range(count):
        offset = (await app.publish(channel, f"{seq:010d}:{pad}")).offset
    return {"offset": offset}


@app.route("/count")
def count(request: Request) -> str:
    return str(app.hub.subscriber_count(request.query.get("channel") or "bench"))
