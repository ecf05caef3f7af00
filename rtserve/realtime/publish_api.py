"""`POST {prefix}/publish` (and `/publish/batch`): publishing for other services over HTTP.

Authorised by `Authorization: Bearer <api key>`. The body is `{"channel", "data",
"idempotency_key"?, "tags"?}` (an `Idempotency-Key` header works too); the batch form takes
`{"publications": [...]}` and answers each in order. Errors are `{"error": {"code",
"message", "temporary"}}` with the channel protocol's codes and a fitting HTTP status.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from rtserve.app.response import JSONResponse
from rtserve.realtime.access import http_error
from rtserve.realtime.component import hub_of
from rtserve.realtime.protocol import (
    CHANNEL_NAME,
    ChannelError,
    ErrorCode,
    check_idempotency_key,
    error_json,
    is_strict_json,
)

if TYPE_CHECKING:
    from rtserve.app.request import Request
    from rtserve.realtime.hub import Hub

MAX_BATCH = 1000


def _authorise(hub: Hub, request: Request) -> None:
    keys = hub.settings.api_keys()
    if not keys:
        raise ChannelError(ErrorCode.PERMISSION_DENIED, "the publish API has no api_key set")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ChannelError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <api key>")
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise ChannelError(ErrorCode.UNAUTHORIZED, "wrong api key")


def refuse_when_shutting_down(request: Request) -> None:
    """ChannelError 108 once the server serving `request` shuts down: its WebSockets are
    closing, so a publication accepted now could reach none of them."""
    if request.exchange.state.shutting_down:
        raise ChannelError(ErrorCode.NOT_AVAILABLE, "the server is shutting down")


async def _publish_one(hub: Hub, item: Any, header_key: str | None) -> dict[str, Any]:
    if not isinstance(item, dict) or "data" not in item:
        raise ChannelError(ErrorCode.BAD_REQUEST, "a publication is {channel, data}")
    channel = item.get("channel")
    if not isinstance(channel, str) or not CHANNEL_NAME.match(channel):
        raise ChannelError(ErrorCode.BAD_REQUEST, "channel missing or not a valid name")
    if not is_strict_json(item["data"]):
        raise ChannelError(ErrorCode.BAD_REQUEST, "data is not JSON (NaN or Infinity)")
    key: str | None = None
    if "idempotency_key" in item:  # the body's field wins over the header
        key = check_idempotency_key(item["idempotency_key"])
    elif header_key is not None:
        key = check_idempotency_key(header_key)
    tags = item.get("tags")  # the hub checks them
    position = await hub.publish(channel, item["data"], idempotency_key=key, tags=tags)
    return {"offset": position.offset, "epoch": position.epoch}


async def _body(request: Request) -> Any:
    try:
        return await request.json()
    except Exception:
        raise ChannelError(ErrorCode.BAD_REQUEST, "the body is not JSON") from None


async def publish_endpoint(request: Request) -> JSONResponse:
    hub = hub_of(request)
    try:
        _authorise(hub, request)
        body = await _body(request)
        refuse_when_shutting_down(request)
        return JSONResponse(await _publish_one(hub, body, request.headers.get("idempotency-key")))
    except ChannelError as exc:
        return http_error(exc)


async def publish_batch_endpoint(request: Request) -> JSONResponse:
    hub = hub_of(request)
    try:
        _authorise(hub, request)
        body = await _body(request)
        refuse_when_shutting_down(request)
        items = body.get("publications") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            raise ChannelError(
                ErrorCode.BAD_REQUEST, f"publications must be a list of at most {MAX_BATCH}"
            )
    except ChannelError as exc:
        return http_error(exc)
    results: list[dict[str, Any]] = []
    for item in items:
        try:
            results.append(await _publish_one(hub, item, None))
        except ChannelError as exc:
            results.append({"error": error_json(exc.code, exc.message, exc.temporary)})
    return JSONResponse({"results": results})
