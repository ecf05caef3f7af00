"""Delta publications (`delta: fossil`): one channel's last JSON text and who is in step.

A subscription made with `"delta": "fossil"` on a channel whose rule allows it gets its `pub`
pushes with the data as JSON text (ASCII, `"delta": false`), or, when it holds the channel's
previous publication and that is smaller, as a fossil delta over that text (`"delta": true`).
Both pushes are encoded once per publication and shared by every subscriber that takes them.

A subscriber is in step when the last push it was handed is the channel's previous
publication (offset - 1). Subscribing (recovering included) puts it out of step, so its
next push is the whole text; the client asks again (resubscribes) when a delta does not
apply, which is how a publication lost on the way (a slow-consumer drop) heals.
"""

from __future__ import annotations

import json
from typing import Any

from rtserve.app.response import dump_json
from rtserve.broker.base import Publication
from rtserve.protocol.fossil import create_delta

OUT_OF_STEP = -1  # the base of a subscriber whose next push must be the whole text

_TEXT = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def data_text(data: Any) -> bytes:
    """The JSON text deltas are computed over: compact, non-ASCII escaped (so a delta of it is
    ASCII, a JSON string as it is)."""
    return _TEXT.encode(data).encode("ascii")


def encode_text_publication(
    channel: str, publication: Publication, data: bytes, *, delta: bool
) -> bytes:
    """A `pub` push whose `data` is text: the data's JSON text, or a delta of it."""
    out: dict[str, Any] = {
        "push": "pub",
        "channel": channel,
        "offset": publication.offset,
        "data": data.decode("ascii"),
        "delta": delta,
    }
    if publication.info is not None:
        out["info"] = publication.info.to_json()
    return dump_json(out)


class DeltaStream:
    """The delta side of one channel with local subscribers: the last publication's text, and
    the offset each delta subscriber was last handed (its base)."""

    __slots__ = ("bases", "offset", "text")

    def __init__(self) -> None:
        self.bases: dict[Any, int] = {}  # subscriber -> offset of the last push it was handed
        self.offset = OUT_OF_STEP
        self.text = b""

    def out_of_step(self, subscriber: Any) -> None:
        """`subscriber` (new, or just recovered) gets the whole text next."""
        self.bases[subscriber] = OUT_OF_STEP

    def advance(self, channel: str, publication: Publication) -> tuple[bytes, bytes | None]:
        """The pushes of `publication`: whole text, and the delta from the previous one when
        this node had it and the delta is the smaller."""
        text = data_text(publication.data)
        full = encode_text_publication(channel, publication, text, delta=False)
        patch = None
        if self.offset == publication.offset - 1:
            delta = create_delta(self.text, text)
            if len(delta) < len(text):
                patch = encode_text_publication(channel, publication, delta, delta=True)
        self.offset, self.text = publication.offset, text
        return full, patch
