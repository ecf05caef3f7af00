"""What the channel client hands over: its errors, and publications, positions, presence
and history as values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rtserve.errors import RtserveError

# --- errors ---------------------------------------------------------------------------------


class ClientError(RtserveError):
    """The server refused a command: `code` (rtserve.realtime.protocol.ErrorCode, or an app's
    own from 1000), `message`, and `temporary` (the same command may succeed later)."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        self.code = int(code)
        self.message = message
        self.temporary = temporary
        super().__init__(f"{self.code} {message}")


class Disconnected(RtserveError):
    """The connection ended: `code` and `reason` of its close (1006 without a close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = int(code)
        self.reason = reason
        super().__init__(f"disconnected: {self.code} {reason}".rstrip())


class Unrecovered(RtserveError):
    """Publications of `channel` after `since` were lost: the stream went on from `position`
    (the server could not recover them, or its stream started a new epoch)."""

    def __init__(self, channel: str, since: Position | None, position: Position) -> None:
        self.channel = channel
        self.since = since
        self.position = position
        super().__init__(f"{channel}: publications after {since} could not be recovered")


# --- values ---------------------------------------------------------------------------------


class Position(NamedTuple):
    """A place in a channel's stream."""

    offset: int
    epoch: str


class PresenceStats(NamedTuple):
    clients: int
    users: int


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a client is, as presence and publications show it."""

    client: str
    user: str | None = None
    info: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, value: Any) -> ClientInfo:
        if not isinstance(value, dict):
            raise TypeError(f"client info is an object, not {value!r}")
        return cls(str(value.get("client")), value.get("user"), value.get("info"))


@dataclass(frozen=True, slots=True)
class Publication:
    channel: str
    offset: int
    data: Any
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None  # the publisher's, which subscription filters match

    @classmethod
    def from_json(cls, channel: str, value: dict[str, Any]) -> Publication:
        info = value.get("info")
        return cls(
            channel,
            int(value["offset"]),
            value.get("data"),
            ClientInfo.from_json(info) if info is not None else None,
            value.get("tags") or None,
        )


@dataclass(frozen=True, slots=True)
class Join:
    channel: str
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class Leave:
    channel: str
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class PresenceDigest:
    """Joins and leaves of an interval, for channels too big for one push each."""

    channel: str
    count: int
    joins: list[ClientInfo] = field(default_factory=list)
    leaves: list[ClientInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PresenceDiff:
    """Who came and went (protocol 2's `presence_diff`, for subscriptions made with
    `presence_diff=True`, instead of Join, Leave and PresenceDigest)."""

    channel: str
    joins: list[ClientInfo] = field(default_factory=list)
    leaves: list[ClientInfo] = field(default_factory=list)


PresenceEvent = Join | Leave | PresenceDigest | PresenceDiff


def grouped_clients(value: Any) -> list[ClientInfo]:
    """The clients of a presence grouped by user (`{"users": {user: {id: info}}, "anonymous":
    {id: info}}`)."""
    if not isinstance(value, dict):
        raise TypeError(f"grouped presence is an object, not {value!r}")
    groups = [*(value.get("users") or {}).values(), value.get("anonymous") or {}]
    return [ClientInfo.from_json(info) for group in groups for info in group.values()]


@dataclass(frozen=True, slots=True)
class History:
    publications: list[Publication]
    position: Position


def to_position(value: Position | tuple[int, str] | None) -> Position | None:
    return None if value is None else Position(int(value[0]), str(value[1]))
