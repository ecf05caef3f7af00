"""The client side of delta publications: the JSON text a delta subscription holds, and the
`pub` pushes with `delta` turned back into data (docs/protocol.md#delta-publications)."""

from __future__ import annotations

import json
from typing import Any

from rtserve.protocol.fossil import DeltaError, apply_delta


class DeltaText:
    """The text of the last publication of one delta subscription and its offset."""

    __slots__ = ("offset", "text")

    def __init__(self) -> None:
        self.offset: int | None = None  # None: no text to apply a delta to
        self.text = b""

    def reset(self) -> None:
        """Subscribed (again): the server sends the whole text first."""
        self.offset = None

    def data(self, push: dict[str, Any], max_size: int) -> Any:
        """The data of a `pub` push with `delta`: its JSON text read, or, for a delta, the
        text it makes of the previous publication's. DeltaError when the delta does not
        follow the offset held, or does not apply (its checksum); nothing is held then."""
        offset = int(push["offset"])
        raw = push["data"]
        if not isinstance(raw, str):
            raise DeltaError(f"the data of a delta publication is a string, not {type(raw)}")
        held, self.offset = self.offset, None
        if push["delta"] is True:
            if held is None or held != offset - 1:
                raise DeltaError(f"a delta for offset {offset} does not follow offset {held}")
            text = apply_delta(self.text, raw.encode(), max_size=max_size)
        else:
            text = raw.encode()
        value = json.loads(text)
        self.offset, self.text = offset, text
        return value
