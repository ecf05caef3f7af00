"""An app for process-level tests: a quick route and a slow one."""

import asyncio
import logging

from rtserve import App, Request

app = App()
log = logging.getLogger("rtserve.testapp")


@app.route("/")
def index(request: Request) -> str:
    return "ok"


@app.route("/slow")
async def slow(request: Request) -> str:
    log.warning("slow request started")
    await asyncio.sleep(float(request.query.get("s", "0.5")))
    return "finished"
