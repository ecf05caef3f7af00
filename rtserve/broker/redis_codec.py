"""How RedisBroker writes a publication's payload into a stream and onto pub/sub, and reads
it back: JSON ``{"d": data, "i": client info, "t": tags}`` (``i`` and ``t`` only when set)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rtserve.broker.base import ClientInfo, Publication

__all__ = ["dumps", "payload", "publication_of"]


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept as it is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def payload(data: Any, info: ClientInfo | None, tags: Mapping[str, str] | None) -> str:
    """A publication's payload as kept and published."""
    body: dict[str, Any] = {"d": data}
    if info is not None:
        body["i"] = info.to_json()
    if tags:
        body["t"] = tags
    return dumps(body)


def publication_of(offset: int, kept: bytes | str | dict[str, Any]) -> Publication:
    """The publication at `offset` of a payload `payload` made (raw, or already parsed)."""
    body = json.loads(kept) if not isinstance(kept, dict) else kept
    info = body.get("i")
    return Publication(
        offset,
        body.get("d"),
        None if info is None else ClientInfo.from_json(info),
        body.get("t") or None,
    )
