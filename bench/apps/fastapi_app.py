"""FastAPI hello world for bench/http.py: the same two endpoints as the raw ASGI app
(uvicorn_app.py), through FastAPI's routing, validation and responses.

Served by every ASGI server of the bench: `rtserve run bench.apps.fastapi_app:app`,
`uvicorn bench.apps.fastapi_app:app`, hypercorn and granian likewise.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI(openapi_url=None)


@app.get("/plaintext", response_class=PlainTextResponse)
async def plaintext() -> str:
    return "Hello, World!"


@app.get("/json/{item_id}")
async def json_item(item_id: int) -> dict[str, object]:
    return {"id": item_id, "message": "Hello, World!"}
