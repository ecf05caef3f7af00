"""The channel wire protocol, sans-I/O: commands in, replies and pushes out (JSON text).

A client sends one JSON object per WebSocket text message: ``{"id": 1, "op": "subscribe",
"channel": "chat:lobby"}``. Each command with an ``id`` gets exactly one reply with the same
id, either ``{"id": 1, "result": {...}}`` or ``{"id": 1, "error": {"code": 103, "message":
"permission denied"}}``. The server also sends pushes, which carry ``push`` instead of ``id``:
``{"push": "pub", "channel": "chat:lobby", "offset": 7, "data": ...}``. A command without an
id is answered too, with ``"id": null``; a message that is not a JSON object closes the
connection (4000). docs/protocol.md is the full reference; the names here are the ones it uses.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from rtserve.app.response import dump_json
from rtserve.broker.base import ClientInfo, Publication, StreamPosition
from rtserve.errors import RtserveError

PROTOCOL_VERSION = 2  # the newest; a connect without `protocol` is answered as version 1
PROTOCOL_VERSIONS = (1, 2)
MAX_BATCH = 100  # commands in one message, and subscriptions in one connect (protocol 2)
MAX_CHANNEL_LENGTH = 255
MAX_IDEMPOTENCY_KEY = 256
_T = TypeVar("_T")
CHANNEL_CHARACTERS = r"A-Za-z0-9_\-:.@/=+#!~$"  # a regex character class's body
CHANNEL_NAME = re.compile(rf"[{CHANNEL_CHARACTERS}]{{1,{MAX_CHANNEL_LENGTH}}}\Z")
METHOD_NAME = re.compile(r"[A-Za-z0-9_\-:.]{1,128}\Z")  # of the `rpc` command


class ErrorCode(enum.IntEnum):
    """Stable error codes of replies (an app's own refusals use 1000 and above)."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    UNKNOWN_OP = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    NOT_CONNECTED = 110
    RATE_LIMITED = 111
    UNRECOVERABLE = 112
    TOO_LARGE = 113
    NOT_SUBSCRIBED = 114
    BROKER_UNAVAILABLE = 115
    ALREADY_CONNECTED = 116
    UNKNOWN_METHOD = 117
    BAD_FILTER = 118


# Each code's default message, and whether the same command may succeed if sent again later
# unchanged (`temporary`, sent with every error of a protocol 2 session).
ERRORS: dict[int, tuple[str, bool]] = {
    ErrorCode.INTERNAL: ("internal error", True),
    ErrorCode.UNAUTHORIZED: ("unauthorized", False),
    ErrorCode.UNKNOWN_CHANNEL: ("unknown channel", False),
    ErrorCode.PERMISSION_DENIED: ("permission denied", False),
    ErrorCode.UNKNOWN_OP: ("unknown op", False),
    ErrorCode.ALREADY_SUBSCRIBED: ("already subscribed", False),
    ErrorCode.LIMIT_EXCEEDED: ("limit exceeded", True),
    ErrorCode.BAD_REQUEST: ("bad request", False),
    ErrorCode.NOT_AVAILABLE: ("not available", False),
    ErrorCode.TOKEN_EXPIRED: ("token expired", False),
    ErrorCode.NOT_CONNECTED: ("connect first", False),
    ErrorCode.RATE_LIMITED: ("rate limited", True),
    ErrorCode.UNRECOVERABLE: ("position not in history", False),
    ErrorCode.TOO_LARGE: ("message too large", False),
    ErrorCode.NOT_SUBSCRIBED: ("not subscribed", False),
    ErrorCode.BROKER_UNAVAILABLE: ("broker unavailable", True),
    ErrorCode.ALREADY_CONNECTED: ("already connected", False),
    ErrorCode.UNKNOWN_METHOD: ("unknown rpc method", False),
    ErrorCode.BAD_FILTER: ("bad filter", False),
}
MESSAGES = {ErrorCode(code): message for code, (message, _) in ERRORS.items()}


def is_temporary(code: int) -> bool:
    """Whether an error of `code` may pass (ERRORS); an app's own codes are not, by default."""
    entry = ERRORS.get(code)
    return entry is not None and entry[1]


class DisconnectCode(enum.IntEnum):
    """WebSocket close codes the channel endpoint ends a connection with."""

    GOING_AWAY = 1001  # server shutdown (RFC 6455)
    BAD_REQUEST = 4000  # not a command (binary, not JSON, not an object)
    UNAUTHORIZED = 4001  # connect refused: bad token or the app's on_connect said no
    TOKEN_EXPIRED = 4002  # the connection's token expired and was not refreshed
    CONNECTION_LIMIT = 4003  # too many connections for this user
    SLOW_CONSUMER = 4004  # could not keep up with its channels (policy "disconnect")
    FORCED = 4005  # disconnected by the server (admin, app code)
    CONNECT_TIMEOUT = 4006  # no connect command in time


class ChannelError(RtserveError):
    """A refusal with a stable code; raise it from hooks to refuse with your own code.

    `channel` names the channel refused, where a request names several (the HTTP streams).
    `temporary`: the same command may succeed later (default: the code's, from ERRORS; False
    for an app's own codes).
    """

    channel: str | None = None

    def __init__(
        self, code: int, message: str | None = None, *, temporary: bool | None = None
    ) -> None:
        self.code = int(code)
        if message is None:
            try:
                message = MESSAGES[ErrorCode(self.code)]
            except ValueError:
                message = "refused"
        self.message = message
        self.temporary = is_temporary(self.code) if temporary is None else temporary
        super().__init__(f"{self.code} {message}")


OPS = frozenset(
    {
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "presence",
        "presence_stats",
        "refresh",
        "ping",
        "sub_refresh",  # protocol 2 on
        "rpc",
    }
)
_NEEDS_CHANNEL = frozenset(
    {"subscribe", "unsubscribe", "publish", "history", "presence", "presence_stats", "sub_refresh"}
)
_NEEDS_TOKEN = frozenset({"refresh", "sub_refresh"})


@dataclass(slots=True, frozen=True)
class SubscribeRequest:
    """One of the subscriptions a `connect` asks for."""

    channel: str
    since: StreamPosition | None = None
    token: str | None = None
    presence_diff: bool = False
    filter: Any = None  # the tag filter as sent (realtime/filters.py checks it)
    delta: str | None = None  # the delta format asked for


@dataclass(slots=True)
class Command:
    """One parsed client command; fields not used by its op are None."""

    id: int | None
    op: str
    channel: str | None = None
    data: Any = None
    token: str | None = None
    since: StreamPosition | None = None
    limit: int | None = None
    idempotency_key: str | None = None
    protocol: int | None = None  # `connect`: the version the client speaks (None: 1)
    subscriptions: list[SubscribeRequest] | None = None  # `connect`: subscribe at once
    method: str | None = None  # `rpc`: the app's handler to call
    reverse: bool = False  # `history`: newest first, paging backwards from `since`
    by_user: bool = False  # `presence`: grouped by user ("group": "user")
    presence_diff: bool = False  # `subscribe`: `presence_diff` pushes for joins and leaves
    delta: str | None = None  # `subscribe`: the delta format asked for ("fossil")
    size: int = 0  # bytes of `data` as JSON, for the size limits
    filter: Any = None  # `subscribe`: the tag filter as sent (realtime/filters.py checks it)
    tags: Any = None  # `publish`: the publication's tags as sent (filters.check_tags)


class CommandError(ChannelError):
    """A command that cannot be parsed; `id` is its id when one could be read."""

    def __init__(self, code: int, message: str, id: int | None = None) -> None:
        super().__init__(code, message)
        self.id = id


def parse_command(text: str | bytes) -> Command:
    """Parse one client message into a Command, or raise CommandError (code 107 or 104)."""
    return command_from_json(_load(text))


def parse_frame(text: str | bytes) -> Command | list[Command | CommandError]:
    """Parse one client message: a command, or a batch (protocol 2: a JSON array of 1 to
    MAX_BATCH commands, each parsed alone, a bad one as its CommandError). CommandError when
    the message is neither."""
    raw = _load(text)
    if type(raw) is not list:
        return command_from_json(raw)
    if not 0 < len(raw) <= MAX_BATCH:
        raise CommandError(ErrorCode.BAD_REQUEST, f"a batch holds 1 to {MAX_BATCH} commands")
    batch: list[Command | CommandError] = []
    for item in raw:
        try:
            batch.append(command_from_json(item))
        except CommandError as exc:
            batch.append(exc)
    return batch


def _load(text: str | bytes) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise CommandError(ErrorCode.BAD_REQUEST, "not JSON") from None
    except RecursionError:  # nesting deeper than the parser's stack
        raise CommandError(ErrorCode.BAD_REQUEST, "JSON nested too deeply") from None


def command_from_json(raw: Any) -> Command:
    """A Command from a parsed JSON value, or CommandError (code 107 or 104)."""
    if not isinstance(raw, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "a command is a JSON object")
    id_ = raw.get("id")
    if id_ is not None and (type(id_) is not int or id_ < 0):
        raise CommandError(ErrorCode.BAD_REQUEST, "id must be a non-negative integer")
    op = raw.get("op")
    if not isinstance(op, str):
        raise CommandError(ErrorCode.BAD_REQUEST, "op missing", id_)
    if op not in OPS:
        raise CommandError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:40]!r}", id_)
    command = Command(id_, op)
    if op in _NEEDS_CHANNEL:
        channel = raw.get("channel")
        if not isinstance(channel, str) or not CHANNEL_NAME.match(channel):
            raise CommandError(ErrorCode.BAD_REQUEST, "channel missing or not a valid name", id_)
        command.channel = channel
    if op == "history":
        reverse = raw.get("reverse", False)
        if type(reverse) is not bool:
            raise CommandError(ErrorCode.BAD_REQUEST, "reverse must be true or false", id_)
        command.reverse = reverse
    if op == "presence":
        group = raw.get("group")
        if group is not None and group != "user":
            raise CommandError(ErrorCode.BAD_REQUEST, 'group must be "user"', id_)
        command.by_user = group == "user"
    if op == "subscribe":
        command.presence_diff = _parse_flag(raw, "presence_diff", id_)
        command.filter = raw.get("filter")
        command.delta = _field(raw, "delta", check_delta, id_)
    if op == "publish":
        command.tags = raw.get("tags")
    if op == "rpc":
        method = raw.get("method")
        if not isinstance(method, str) or not METHOD_NAME.match(method):
            raise CommandError(ErrorCode.BAD_REQUEST, "method missing or not a valid name", id_)
        command.method = method
    command.token = _field(raw, "token", check_token, id_)
    if command.token is None and op in _NEEDS_TOKEN:
        raise CommandError(ErrorCode.BAD_REQUEST, f"{op} needs a token", id_)
    if "data" in raw:
        command.data = raw["data"]
        try:
            command.size = len(dump_json(command.data))
        except RecursionError:  # parsed, but too deep to encode again for subscribers
            raise CommandError(ErrorCode.BAD_REQUEST, "data nested too deeply", id_) from None
    elif op == "publish":
        raise CommandError(ErrorCode.BAD_REQUEST, "publish needs data", id_)
    command.idempotency_key = _field(raw, "idempotency_key", check_idempotency_key, id_)
    if op == "connect":
        if "protocol" in raw:
            protocol = raw["protocol"]
            if type(protocol) is not int or protocol not in PROTOCOL_VERSIONS:
                versions = " or ".join(map(str, PROTOCOL_VERSIONS))
                raise CommandError(ErrorCode.BAD_REQUEST, f"protocol must be {versions}", id_)
            command.protocol = protocol
        if "subscriptions" in raw:
            command.subscriptions = _parse_subscriptions(raw["subscriptions"], id_)
    command.since = _field(raw, "since", check_position, id_)
    command.limit = _field(raw, "limit", check_limit, id_)
    return command


def is_strict_json(value: Any) -> bool:
    """Whether `value` (as parsed by json.loads) holds no NaN or Infinity: those are not JSON,
    and a publication carrying one would break every subscriber's JSON.parse. For bodies read
    by Python's lenient parser (the HTTP endpoints); iterative, so any depth is fine."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return False
        elif kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.values())
    return True


_STRICT = json.JSONEncoder(allow_nan=False)


def check_publishable(data: Any) -> None:
    """ChannelError 107 unless `data` encodes as strict JSON: server code may hand `publish`
    any Python value, and one that cannot be sent (an object, NaN, a cycle) must be refused
    where it is made, not fail later in every delivery and every recovery from history."""
    try:
        _STRICT.encode(data)
    except (TypeError, ValueError, RecursionError) as error:
        raise ChannelError(ErrorCode.BAD_REQUEST, f"data is not JSON: {error}") from None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: a publication carrying one would break every
    subscriber's JSON.parse."""
    raise ValueError(f"{name} is not JSON")


def _parse_subscriptions(value: Any, id_: int | None) -> list[SubscribeRequest]:
    """`connect`'s `subscriptions`: a list of {channel, since?, token?}, each channel once."""
    if type(value) is not list or len(value) > MAX_BATCH:
        raise CommandError(
            ErrorCode.BAD_REQUEST, f"subscriptions must be a list of at most {MAX_BATCH}", id_
        )
    requests: list[SubscribeRequest] = []
    seen: set[str] = set()
    for item in value:
        channel = item.get("channel") if isinstance(item, dict) else None
        if not isinstance(channel, str) or not CHANNEL_NAME.match(channel):
            raise CommandError(
                ErrorCode.BAD_REQUEST, "each subscription needs a valid channel", id_
            )
        if channel in seen:
            raise CommandError(ErrorCode.BAD_REQUEST, f"{channel} is in subscriptions twice", id_)
        seen.add(channel)
        assert isinstance(item, dict)
        token = _field(item, "token", check_token, id_)
        position = _field(item, "since", check_position, id_)
        diff = _parse_flag(item, "presence_diff", id_)
        delta = _field(item, "delta", check_delta, id_)
        requests.append(SubscribeRequest(channel, position, token, diff, item.get("filter"), delta))
    return requests


def _parse_flag(raw: dict[str, Any], name: str, id_: int | None) -> bool:
    value = raw.get(name, False)
    if type(value) is not bool:
        raise CommandError(ErrorCode.BAD_REQUEST, f"{name} must be true or false", id_)
    return value


def _field(
    raw: dict[str, Any], name: str, check: Callable[[Any], _T], id_: int | None
) -> _T | None:
    """`check(raw[name])` when the field is there (null included), else None."""
    if name not in raw:
        return None
    try:
        return check(raw[name])
    except ChannelError as exc:
        raise CommandError(exc.code, exc.message, id_) from None


# --- fields every transport checks alike (107 when they are not acceptable) -----------------


def check_token(value: Any) -> str:
    if not isinstance(value, str):
        raise ChannelError(ErrorCode.BAD_REQUEST, "token must be a string")
    return value


def check_idempotency_key(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY:
        raise ChannelError(
            ErrorCode.BAD_REQUEST,
            f"idempotency_key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters",
        )
    return value


def check_delta(value: Any) -> str:
    """A delta format a subscription asks for: "fossil" (the only one)."""
    if value != "fossil":
        raise ChannelError(ErrorCode.BAD_REQUEST, 'delta must be "fossil"')
    return "fossil"


def check_limit(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ChannelError(ErrorCode.BAD_REQUEST, "limit must be a non-negative integer")
    return value


def check_position(value: Any) -> StreamPosition:
    if isinstance(value, dict):
        offset, epoch = value.get("offset"), value.get("epoch")
        if type(offset) is int and offset >= 0 and isinstance(epoch, str):
            return StreamPosition(offset, epoch)
    raise ChannelError(ErrorCode.BAD_REQUEST, "since must be {offset: int >= 0, epoch: string}")


# --- what the server sends ------------------------------------------------------------------


def encode_reply(id_: int | None, result: dict[str, Any]) -> bytes:
    return dump_json({"id": id_, "result": result})


def encode_error(id_: int | None, code: int, message: str, temporary: bool | None = None) -> bytes:
    """An error reply; with `temporary` (protocol 2) the error says whether it may pass."""
    return dump_json({"id": id_, "error": error_json(code, message, temporary)})


def error_json(code: int, message: str, temporary: bool | None = None) -> dict[str, Any]:
    """The `error` object of a reply (and of a refused subscription in a connect result)."""
    error: dict[str, Any] = {"code": int(code), "message": message}
    if temporary is not None:
        error["temporary"] = temporary
    return error


def publication_json(publication: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {"offset": publication.offset, "data": publication.data}
    if publication.info is not None:
        out["info"] = publication.info.to_json()
    if publication.tags:
        out["tags"] = publication.tags
    return out


def encode_publication(channel: str, publication: Publication) -> bytes:
    """The `pub` push, encoded once and shared by every subscriber."""
    out: dict[str, Any] = {
        "push": "pub",
        "channel": channel,
        "offset": publication.offset,
        "data": publication.data,
    }
    if publication.info is not None:
        out["info"] = publication.info.to_json()
    if publication.tags:
        out["tags"] = publication.tags
    return dump_json(out)


def encode_join(channel: str, info: ClientInfo) -> bytes:
    return dump_json({"push": "join", "channel": channel, "info": info.to_json()})


def encode_leave(channel: str, info: ClientInfo) -> bytes:
    return dump_json({"push": "leave", "channel": channel, "info": info.to_json()})


def encode_presence_digest(
    channel: str, count: int, joins: list[ClientInfo], leaves: list[ClientInfo]
) -> bytes:
    """Joins and leaves of the last interval in one push, for channels too big for each."""
    return dump_json(
        {
            "push": "presence",
            "channel": channel,
            "count": count,
            "joins": [i.to_json() for i in joins],
            "leaves": [i.to_json() for i in leaves],
        }
    )


PING_PUSH = b'{"push":"ping"}'  # the heartbeat of protocol 2 (no answer expected)


def presence_by_user(clients: Iterable[ClientInfo]) -> dict[str, Any]:
    """Clients grouped by user: `{"users": {user: {client: info}}, "anonymous": {client:
    info}}` (the anonymous have no user)."""
    users: dict[str, dict[str, Any]] = {}
    anonymous: dict[str, Any] = {}
    for info in clients:
        group = anonymous if info.user is None else users.setdefault(info.user, {})
        group[info.client] = info.to_json()
    return {"users": users, "anonymous": anonymous}


def encode_presence_diff(channel: str, joins: list[ClientInfo], leaves: list[ClientInfo]) -> bytes:
    """Who came and went (protocol 2's `presence_diff`), each side grouped by user."""
    return dump_json(
        {
            "push": "presence_diff",
            "channel": channel,
            "joins": presence_by_user(joins),
            "leaves": presence_by_user(leaves),
        }
    )


def encode_unsubscribed(channel: str, code: int, message: str) -> bytes:
    """The server ended a subscription (the client did not ask)."""
    return dump_json({"push": "unsubscribe", "channel": channel, "code": code, "message": message})
