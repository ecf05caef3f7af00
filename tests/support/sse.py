"""Server-Sent Events read as a browser's EventSource reads them, one event at a time."""

from __future__ import annotations

import http.client


class SSE:
    """An EventSource-like reader over http.client, one event at a time."""

    def __init__(self, port: int, query: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", f"/rt/sse?{query}", headers=headers or {})
        self.response = self.conn.getresponse()

    def event(self) -> dict[str, str]:
        """The next event or comment: fields `id`, `event`, `data`, or `comment`."""
        out: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("stream ended")
            text = line.decode("utf-8").rstrip("\n")
            if text == "":
                if out:
                    return out
                continue
            if text.startswith(":"):
                out["comment"] = text[1:].strip()
                continue
            name, _, value = text.partition(": ")
            out[name] = value

    def next(self, kind: str = "pub") -> dict[str, str]:
        while True:
            event = self.event()
            if event.get("event") == kind:
                return event

    def close(self) -> None:
        self.response.close()
        self.conn.close()
