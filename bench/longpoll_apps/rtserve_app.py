"""rtserve's long polling as users configure it: one channel with history, `/rt/poll`.

`POST /publish` publishes its body on `lp`; `GET /pending` says how many polls wait on it.
"""

from __future__ import annotations

from rtserve import App, ChannelSettings, Request, ServerSettings

app = App(ServerSettings(access_log=False), channels=ChannelSettings(poll_timeout=60))
app.channel("lp", history=10)


@app.route("/publish", methods=["POST"])
async def publish(request: Request) -> dict[str, int]:
    return {"offset": (await app.publish("lp", await request.json())).offset}


@app.route("/pending")
def pending(request: Request) -> str:
    return str(app.hub.subscriber_count("lp"))
