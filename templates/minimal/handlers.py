"""The project's handlers; rtserve.yaml routes URLs to them (`handlers:hello`).

A handler gets the request and the route's path parameters; what it returns is the response
(a dict or list becomes JSON, a str text/plain; or return a Response).
"""

from __future__ import annotations

from rtserve import Request


async def hello(request: Request, name: str) -> dict[str, str]:
    return {"hello": name, "client": request.client}
