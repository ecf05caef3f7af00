"""A test client of the channel protocol on the independent `websockets` package."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 5.0


class ReplyError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class Peer:
    """One /rt/ws connection: `call` sends a command and returns its result (or raises
    ReplyError); pushes received meanwhile wait in `pushes` for `next_push`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []
        self.info: Any = None  # the connect command's result (None before it, or without it)

    @classmethod
    async def open(cls, url: str, *, connect_cmd: bool = True, **fields: Any) -> Peer:
        peer = cls(await connect(url, open_timeout=TIMEOUT))
        if connect_cmd:
            peer.info = await peer.call("connect", **fields)
        return peer

    async def send(self, op: str, **fields: Any) -> int:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "op": op, **fields}))
        return self.next_id

    async def reply(self, id_: int) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if "push" in message:
                self.pushes.append(message)
                continue
            assert message["id"] == id_, message
            return message  # type: ignore[no-any-return]

    async def call(self, op: str, **fields: Any) -> Any:
        message = await self.reply(await self.send(op, **fields))
        if "error" in message:
            raise ReplyError(message["error"]["code"], message["error"]["message"])
        return message["result"]

    async def next_push(self, kind: str | None = None) -> dict[str, Any]:
        """The next push (of `kind`, skipping others)."""
        while True:
            if self.pushes:
                push = self.pushes.pop(0)
            else:
                push = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
                assert "push" in push, push
            if kind is None or push["push"] == kind:
                return push

    async def pubs(self, n: int) -> list[dict[str, Any]]:
        return [await self.next_push("pub") for _ in range(n)]

    async def close(self) -> None:
        await self.ws.close()

    async def closed_with(self) -> tuple[int | None, str | None]:
        """Wait for the server to close; its close code and reason."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        except Exception:
            pass
        await asyncio.wait_for(self.ws.wait_closed(), TIMEOUT)
        return self.ws.close_code, self.ws.close_reason
