"""The admin interface of several workers: the supervisor serves the project's admin address
and answers each request by asking every worker's own admin socket
(`.rtserve/workers/<index>.sock`) and combining what they say.

Counters, open connections, histograms, CPU and memory are summed; loop lag is the worst
worker's; channels are merged by name (subscribers and publications summed); connections are
listed worker after worker, their ids prefixed with the worker's index (`1-7f3a…`) so that
a disconnect reaches the right process. `workers` lists each worker's pid, connections,
memory, CPU and loop lag. Users with connections on two workers count once on each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from rtserve.app.request import Request
from rtserve.app.response import JSONResponse
from rtserve.errors import RtserveError
from rtserve.histogram import quantile
from rtserve.stats.admin import MAX_LIMIT, AdminServer

log = logging.getLogger("rtserve.admin")

FETCH_TIMEOUT = 2.0
MAX_CHANNEL_PAGES = 10  # per worker, of MAX_LIMIT channels: beyond that the merge is partial


class WorkerUnavailable(RtserveError):
    """A worker's admin socket did not answer (starting, stopping, or stuck)."""


async def fetch(path: Path, method: str, target: str, timeout: float = FETCH_TIMEOUT) -> Any:
    """One HTTP/1.1 request to an admin unix socket; the JSON body of its answer."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(
                f"{method} {target} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            return await reader.read()
        finally:
            writer.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError) as exc:
        raise WorkerUnavailable(f"{path}: {exc}") from None
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head[9:12]
    if not status.isdigit() or int(status) >= 500:
        raise WorkerUnavailable(f"{path}: answered {head[:40]!r}")
    try:
        return json.loads(body)
    except ValueError:
        raise WorkerUnavailable(f"{path}: not JSON") from None


def add_up(values: Sequence[Any]) -> Any:
    """Numbers summed, dicts summed key by key, equal-length lists summed item by item;
    anything else: the first value."""
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, int | float):
        return sum(v for v in values if isinstance(v, int | float))
    if isinstance(first, dict):
        keys = [k for v in values if isinstance(v, dict) for k in v]
        return {k: add_up([v[k] for v in values if isinstance(v, dict) and k in v]) for k in keys}
    if isinstance(first, list) and all(
        isinstance(v, list) and len(v) == len(first) for v in values
    ):
        return [add_up([v[i] for v in values]) for i in range(len(first))]
    return first


def combine_stats(
    parts: list[tuple[int, dict[str, Any]]], pid: int, started: float, started_at: float
) -> dict[str, Any]:
    """The stats of the workers that answered ((index, stats) pairs) as one snapshot."""
    snaps = [stats for _, stats in parts]
    out: dict[str, Any] = {
        "pid": pid,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "uptime_seconds": round(time.monotonic() - started, 3),
        "serving": any(s.get("serving") for s in snaps),
    }
    for key in ("open", "totals", "hub", "channels", "process"):
        out[key] = add_up([s.get(key, {}) for s in snaps]) if snaps else {}
    lags = [s.get("loop_lag_seconds", {}) for s in snaps]
    out["loop_lag_seconds"] = {
        "last": max((lag.get("last", 0.0) for lag in lags), default=0.0),
        "max": max((lag.get("max", 0.0) for lag in lags), default=0.0),
    }
    latency: dict[str, Any] = {}
    for name in ("http", "broker_publish"):
        histograms = [
            s["latency_seconds"][name] for s in snaps if name in s.get("latency_seconds", {})
        ]
        if not histograms:
            continue
        merged = add_up(histograms)
        merged["bounds"] = histograms[0]["bounds"]
        merged["p50"] = quantile(merged["bounds"], merged["counts"], 0.5)
        merged["p99"] = quantile(merged["bounds"], merged["counts"], 0.99)
        latency[name] = merged
    out["latency_seconds"] = latency
    out["workers"] = [_worker_row(index, stats) for index, stats in parts]
    return out


def _worker_row(index: int, stats: dict[str, Any]) -> dict[str, Any]:
    process = stats.get("process", {})
    opened = stats.get("open", {})
    return {
        "worker": index,
        "pid": stats.get("pid"),
        "uptime_seconds": stats.get("uptime_seconds"),
        "connections": sum(opened.get(t, 0) for t in ("http", "websocket", "channel")),
        "open": opened,
        "rss_bytes": process.get("rss_bytes", process.get("max_rss_bytes")),
        "cpu_seconds": round(
            process.get("cpu_user_seconds", 0.0) + process.get("cpu_system_seconds", 0.0), 3
        ),
        "loop_lag_seconds": stats.get("loop_lag_seconds", {}),
    }


class CombinedAdmin(AdminServer):
    """The admin interface for `count` workers of the project in `folder`."""

    def __init__(self, config: Any, folder: Path, count: int) -> None:
        super().__init__(
            None,  # type: ignore[arg-type]  # no App here: every figure comes from the workers
            socket=config.socket,
            listen=config.listen,
            token=config.token,
            metrics=config.metrics,
        )
        from rtserve.cli.listening import worker_socket

        self.worker_sockets = [worker_socket(folder, i) for i in range(count)]
        self.pids: dict[int, int] = {}

    def worker_ready(self, index: int, pid: int) -> None:
        self.pids[index] = pid

    def worker_gone(self, index: int) -> None:
        self.pids.pop(index, None)

    async def _each(self, method: str, target: str) -> list[tuple[int, Any]]:
        """(index, answer) of every worker that answered, in index order."""

        async def one(index: int) -> tuple[int, Any] | None:
            try:
                return index, await fetch(self.worker_sockets[index], method, target)
            except WorkerUnavailable as exc:
                log.debug("worker %d did not answer: %s", index, exc)
                return None

        answers = await asyncio.gather(*(one(i) for i in range(len(self.worker_sockets))))
        return [a for a in answers if a is not None]

    async def current_stats(self) -> dict[str, Any]:
        parts = await self._each("GET", "/rt/admin/stats")
        combined = combine_stats(parts, os.getpid(), self._started, self.started_at)
        channels = await self._all_channels()
        combined["channels"]["count"] = len(channels)
        combined["channels"]["subscribers"] = sum(c["subscribers"] for c in channels.values())
        return combined

    async def _all_channels(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for index in range(len(self.worker_sockets)):
            for page in range(MAX_CHANNEL_PAGES):
                query = urlencode({"limit": MAX_LIMIT, "offset": page * MAX_LIMIT})
                try:
                    answer = await fetch(
                        self.worker_sockets[index], "GET", f"/rt/admin/channels?{query}"
                    )
                except WorkerUnavailable:
                    break
                for channel in answer.get("channels", []):
                    entry = merged.setdefault(
                        channel["name"],
                        {"name": channel["name"], "subscribers": 0, "publications": 0},
                    )
                    entry["subscribers"] += channel.get("subscribers", 0)
                    # Every worker with subscribers gets every publication: the most is right.
                    entry["publications"] = max(
                        entry["publications"], channel.get("publications", 0)
                    )
                if (page + 1) * MAX_LIMIT >= answer.get("total", 0):
                    break
        return merged

    async def list_channels(self, *, limit: int, offset: int, prefix: str | None) -> Any:
        items = [
            c
            for name, c in (await self._all_channels()).items()
            if prefix is None or name.startswith(prefix)
        ]
        items.sort(key=lambda c: (-c["subscribers"], c["name"]))
        return {
            "total": len(items),
            "offset": offset,
            "limit": limit,
            "channels": items[offset : offset + limit],
        }

    async def list_connections(self, **query: Any) -> dict[str, Any]:
        limit, offset = query.pop("limit"), query.pop("offset")
        params = {k: v for k, v in query.items() if v is not None}
        params["limit"] = min(MAX_LIMIT, offset + limit)
        rows: list[dict[str, Any]] = []
        total = 0
        for index, answer in await self._each("GET", f"/rt/admin/connections?{urlencode(params)}"):
            total += answer.get("total", 0)
            for conn in answer.get("connections", []):
                rows.append(dict(conn, id=f"{index}-{conn['id']}", worker=index))
        if query.get("sort") == "queued":
            rows.sort(key=lambda c: -int(c.get("queued_bytes") or 0))
        else:
            rows.sort(key=lambda c: -float(c.get("age_seconds") or 0.0))
        return {
            "total": total,
            "offset": offset,
            "limit": limit,
            "connections": rows[offset : offset + limit],
        }

    async def disconnect(self, request: Request, conn_id: str) -> Any:
        index_text, _, own_id = conn_id.partition("-")
        if not index_text.isdigit() or int(index_text) >= len(self.worker_sockets) or not own_id:
            return JSONResponse({"disconnected": False, "error": "no such connection"}, 404)
        target = f"/rt/admin/connections/{own_id}/disconnect"
        try:
            answer = await fetch(self.worker_sockets[int(index_text)], "POST", target)
        except WorkerUnavailable:
            return JSONResponse({"disconnected": False, "error": "worker not answering"}, 503)
        if not answer.get("disconnected"):
            return JSONResponse(answer, 404)
        return answer
