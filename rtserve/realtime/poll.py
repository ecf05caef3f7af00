"""Channels over plain HTTP requests: long polling, a one-shot history read, client publish.

`GET {prefix}/poll?channel=A&since=A:OFFSET:EPOCH&timeout=25&token=T` (and
`filter=A:JSON`, a tag filter) answers at once when the history holds publications after
`since`, else waits, as a Hub subscriber, for the next
publication (or `timeout` seconds): `{"channels": {A: {"publications", "offset", "epoch",
"recovered"}}}`. Polling needs channels with history (108 otherwise): that is what makes the
time between two polls lossless.

`GET {prefix}/history?channel=A[&since=...][&limit=N][&filter=A:JSON]&token=T` reads the
history (the matches of a tag filter, with one), and
`GET {prefix}/presence?channel=A[&stats=1]&token=T` the presence, with the permissions of a
subscribe. `POST {prefix}/client/publish` (`Authorization: Bearer <client token>`, or
anonymous when the app allows it) publishes as a WebSocket client would. Each request
connects a client as `connect` does: `on_connect` gets the `data` query parameter (JSON).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from rtserve.app.response import JSON, JSONResponse, Response, dump_json
from rtserve.app.shared import SharedResponse
from rtserve.broker.base import ClientInfo
from rtserve.realtime.access import (
    authorize_subscribe,
    bearer_token,
    channel_names,
    cors_headers,
    http_buckets,
    http_client,
    http_error,
    positions,
    refusing,
    tag_filters,
    take_address_rate,
    take_rate,
    unwatch_shutdown,
    watch_shutdown,
)
from rtserve.realtime.component import hub_of
from rtserve.realtime.context import ChannelContext, token_user
from rtserve.realtime.filters import check_filter_allowed
from rtserve.realtime.hub import Hub
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.protocol import (
    CHANNEL_NAME,
    ChannelError,
    ErrorCode,
    check_idempotency_key,
    is_strict_json,
    publication_json,
)
from rtserve.realtime.publish_api import refuse_when_shutting_down
from rtserve.realtime.rules import ChannelRule

if TYPE_CHECKING:
    from rtserve.app.request import Request

log = logging.getLogger("rtserve.channels")

MAX_POLL_TIMEOUT = 60.0
MAX_WAITING = 1000  # publications a waiting poll keeps per channel (the rest: next poll)


class _Subscribed(NamedTuple):
    """Where a poll's subscribe left a channel (what of its result the answer needs)."""

    epoch: str
    last: int  # the offset the poll has everything up to
    recovered: bool
    publications: Sequence[dict[str, Any]]  # recovered from the history, as JSON


class _Waiter:
    """A long poll as the Hub sees it: it notes what arrives and, once it has something to
    say, answers its request there and then (a publication releases every poll in one pass).

    While it waits its handler has returned (the exchange deferred): no Task, no timer of its
    own (the hub's `poll_deadlines` holds its timeout) and a callback on the connection's
    close. Whatever ends the wait answers: a publication, the timeout, the client leaving, the
    server stopping, the channel's stream restarting. A publication that alone answers it (the
    common release) gives it the answer every such poll shares (`_Release`).
    """

    __slots__ = (
        "channels",
        "client",
        "cors",
        "due",
        "got",
        "hub",
        "request",
        "subscribed",
        "waiting",
    )
    kind = "poll"  # how the admin interface counts it among ServerState.long_lived

    def __init__(
        self,
        hub: Hub,
        client: ClientInfo,
        request: Request,
        cors: list[tuple[str, str]],
        channels: list[str],
    ) -> None:
        self.hub = hub
        self.client = client
        self.request = request
        self.cors = tuple(cors)  # () for most: shared
        self.channels = channels
        self.got: dict[str, list[Outbound]] | None = None  # made by the first delivery
        self.subscribed: dict[str, _Subscribed] = {}
        self.waiting = False
        self.due = 0  # its slot in the hub's poll_deadlines while waiting

    def wait(self, timeout: float) -> None:
        """Answer later: at the latest in `timeout` seconds, or when the client leaves."""
        request = self.request
        exchange = request.exchange
        exchange.defer()
        request.forget_parsed()  # read already: a waiting poll need not keep it
        self.waiting = True
        self.due = self.hub.poll_deadlines.add(timeout, self)
        exchange.on_disconnect(self._client_left)  # runs in the server's context
        watch_shutdown(request, self)

    def expired(self) -> None:
        self._release()

    def _client_left(self) -> None:
        self._release()  # nothing is written: the exchange is only accounted for

    def done_waiting(self) -> None:
        """Forget the deadline and the connection's close, and leave every channel (again:
        harmless)."""
        request, hub = self.request, self.hub
        if self.waiting:
            self.waiting = False
            hub.poll_deadlines.discard(self.due, self)
            request.exchange.on_disconnect(None)
        unwatch_shutdown(request, self)
        for channel in self.channels:
            hub.unsubscribe(self, channel)

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        if self.got is None and self.waiting and message.publication is not None:
            subscribed = self.subscribed.get(channel)
            if (
                subscribed is not None
                and message.offset > subscribed.last
                and subscribed.recovered
                and not subscribed.publications
                and len(self.subscribed) == 1
            ):  # the common release: this publication alone is the answer, shared
                self._answer_shared(message)
                return
        if self.got is None:
            self.got = {}
        got = self.got.setdefault(channel, [])
        if len(got) < MAX_WAITING:
            got.append(message)
        subscribed = self.subscribed.get(channel)
        if subscribed is not None and message.offset > subscribed.last:
            self._release()

    def _answer_shared(self, message: Outbound) -> None:
        """Answer now with `message`'s shared answer; leave the hub, the deadlines and the
        shutdown watch with every poll it released, once it reached every subscriber."""
        self.waiting = False
        request = self.request
        exchange = request.exchange
        exchange.on_disconnect(None)
        release = _Release.of(message)
        if not release.released:  # the first this publication releases
            self.hub.after_delivery(release.leave)
        release.released.append(self)
        try:
            request.app.respond_shared(request, release.answer(self.cors))
        except Exception:
            log.exception("answering a long poll failed")
            exchange.answer_internal_error()

    def left(self) -> None:
        """Released by a publication (`_answer_shared`): leave what it waited in."""
        hub = self.hub
        hub.poll_deadlines.discard(self.due, self)
        unwatch_shutdown(self.request, self)
        for channel in self.channels:
            hub.unsubscribe(self, channel)

    def _release(self) -> None:
        """Answer with what there is, once (not while still subscribing: the handler checks
        `ready()` then)."""
        if not self.waiting:
            return
        self.done_waiting()
        request = self.request
        try:
            shared = self._shared_answer()
            if shared is not None:
                request.app.respond_shared(request, shared)
            else:
                request.app.respond(request, self.response())
        except Exception:
            log.exception("answering a long poll failed")
            request.exchange.answer_internal_error()

    def deliver_event(self, channel: str, message: Outbound) -> None:
        pass  # pollers are not told about joins and leaves

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        self._release()  # the stream restarted: the next poll learns `recovered: false`

    def stop(self) -> None:
        self._release()  # the server shuts down: answer with what there is

    def response(self) -> Response:
        """The answer: each channel's publications after its position, and where it is."""
        if len(self.subscribed) == 1:
            (channel,) = self.subscribed
            only = self._only_publication(channel)
            if only is not None:
                return Response(only.poll_answer, headers=self.cors, content_type=JSON)
        body = {"channels": {channel: self.answer(channel) for channel in self.subscribed}}
        return JSONResponse(body, headers=self.cors)

    def _shared_answer(self) -> SharedResponse | None:
        """The answer every poll of its channel and CORS fields that this one publication
        releases gets, when that is all this poll has to say."""
        if len(self.subscribed) != 1:
            return None
        (channel,) = self.subscribed
        only = self._only_publication(channel)
        return None if only is None else _Release.of(only).answer(self.cors)

    def _only_publication(self, channel: str) -> Outbound | None:
        """The one publication `channel` answers with, when it has nothing else to say."""
        _, last, recovered, publications = self.subscribed[channel]
        if publications or not recovered:
            return None
        newer = [m for m in self._got(channel) if m.offset > last and m.publication]
        return newer[0] if len(newer) == 1 else None

    def answer(self, channel: str) -> dict[str, Any]:
        epoch, last, recovered, recovered_publications = self.subscribed[channel]
        publications = list(recovered_publications)
        for message in self._got(channel):
            if message.offset > last and message.publication is not None:
                publications.append(publication_json(message.publication))
                last = message.offset
        return {
            "publications": publications,
            "offset": last,
            "epoch": epoch,
            "recovered": recovered,
        }

    def ready(self) -> bool:
        """Something to answer with already: publications, or a position that was lost."""
        for channel, (_, last, recovered, publications) in self.subscribed.items():
            if publications or not recovered:
                return True
            if any(m.offset > last for m in self._got(channel)):
                return True
        return False

    def _got(self, channel: str) -> list[Outbound]:
        """What arrived on `channel` while subscribed."""
        got = self.got
        return [] if got is None else got.get(channel, [])


class _Release:
    """What one publication does for the polls it alone answers: one shared answer per set of
    CORS fields, and their leaving (hub, deadlines, shutdown watch) in one pass once it has
    reached every subscriber: after the last answer is written."""

    __slots__ = ("_answers", "body", "released")

    def __init__(self, message: Outbound) -> None:
        self.body = message.poll_answer  # not the message, which keeps this: no cycle
        self._answers: dict[tuple[tuple[str, str], ...], SharedResponse] = {}
        self.released: list[_Waiter] = []

    @classmethod
    def of(cls, message: Outbound) -> _Release:
        """The release of `message` (made by its first poll, kept on the message)."""
        release = message.poll_release
        if release is None:
            release = message.poll_release = cls(message)
        assert isinstance(release, _Release)
        return release

    def answer(self, cors: tuple[tuple[str, str], ...]) -> SharedResponse:
        answers = self._answers
        shared = answers.get(cors)
        if shared is None:
            response = Response(self.body, headers=cors, content_type=JSON)
            shared = answers[cors] = SharedResponse(response)
        return shared

    def leave(self) -> None:
        released, self.released = self.released, []
        for waiter in released:
            waiter.left()


def _timeout(request: Request, default: float) -> float:
    value = request.query.get("timeout")
    if value is None:
        return default
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not math.isfinite(timeout) or timeout < 0:
        raise ChannelError(ErrorCode.BAD_REQUEST, "timeout is seconds, 0 to 60")
    return min(timeout, MAX_POLL_TIMEOUT)


async def poll_endpoint(request: Request) -> Response | None:
    hub = hub_of(request)
    cors = cors_headers(request, hub.settings)
    waiter: _Waiter | None = None
    try:
        client, claims = await http_client(hub, request, request.query.get("token"))
        channels = channel_names(request)
        since = positions(request, channels)
        filters = tag_filters(request, channels)
        timeout = _timeout(request, hub.settings.poll_timeout)
        waiter = _Waiter(hub, client, request, cors, channels)
        for channel in channels:
            with refusing(channel):
                rule, _, _ = await authorize_subscribe(hub, channel, client, claims, request)
                if not rule.history:
                    raise ChannelError(
                        ErrorCode.NOT_AVAILABLE, f"{channel} keeps no history: it cannot be polled"
                    )
                result, last = await hub.subscribe(
                    waiter, channel, since.get(channel), filters.get(channel)
                )
                waiter.subscribed[channel] = _Subscribed(
                    result["epoch"],
                    last,
                    result.get("recovered", True),
                    result.get("publications") or (),
                )
        if not waiter.ready() and timeout > 0 and not request.exchange.disconnected:
            waiter.wait(timeout)
            return None  # the waiter answers
        return waiter.response()
    except ChannelError as exc:
        hub.stats.refused += 1
        return http_error(exc, cors)
    finally:
        if waiter is not None and not waiter.waiting:
            waiter.done_waiting()


async def history_endpoint(request: Request) -> Response:
    hub = hub_of(request)
    cors = cors_headers(request, hub.settings)
    try:
        client, claims = await http_client(hub, request, request.query.get("token"))
        channels = channel_names(request, max_channels=1)
        channel = channels[0]
        since = positions(request, channels).get(channel)
        tag_filter = tag_filters(request, channels).get(channel)
        with refusing(channel):
            rule, _, _ = await authorize_subscribe(hub, channel, client, claims, request)
            check_filter_allowed(rule, tag_filter)
        limit = rule.history
        given = request.query.get("limit")
        if given is not None:
            if not given.isdigit():
                raise ChannelError(ErrorCode.BAD_REQUEST, "limit must be a non-negative integer")
            limit = int(given)
        reverse = request.query.get("reverse", "0")
        if reverse not in ("0", "1", "false", "true"):
            raise ChannelError(ErrorCode.BAD_REQUEST, "reverse is 1 or 0")
        if reverse in ("1", "true"):
            answer = await hub.history_before(
                channel, before=since, limit=limit, tag_filter=tag_filter
            )
        else:
            answer = await hub.history(channel, since=since, limit=limit, tag_filter=tag_filter)
        return JSONResponse(answer, headers=cors)
    except ChannelError as exc:
        hub.stats.refused += 1
        return http_error(exc, cors)


async def presence_endpoint(request: Request) -> Response:
    """`GET {prefix}/presence?channel=A[&stats=1]`: who is in A (or how many), as the WebSocket
    `presence` and `presence_stats` answer, with the permissions of a subscribe."""
    hub = hub_of(request)
    cors = cors_headers(request, hub.settings)
    try:
        client, claims = await http_client(hub, request, request.query.get("token"))
        channel = channel_names(request, max_channels=1)[0]
        stats = request.query.get("stats", "0")
        if stats not in ("0", "1", "false", "true"):
            raise ChannelError(ErrorCode.BAD_REQUEST, "stats is 1 or 0")
        group = request.query.get("group")
        if group not in (None, "user"):
            raise ChannelError(ErrorCode.BAD_REQUEST, "group is user")
        with refusing(channel):
            await authorize_subscribe(hub, channel, client, claims, request)
        if stats in ("1", "true"):
            return JSONResponse(await hub.presence_stats(channel), headers=cors)
        answer = await hub.presence(channel, by_user=group == "user")
        return JSONResponse(answer, headers=cors)
    except ChannelError as exc:
        hub.stats.refused += 1
        return http_error(exc, cors)


async def client_publish_endpoint(request: Request) -> Response:
    hub = hub_of(request)
    cors = cors_headers(request, hub.settings)
    if request.method == "OPTIONS":  # a CORS preflight
        if cors:
            cors += [
                ("Access-Control-Allow-Methods", "POST"),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                ("Access-Control-Max-Age", "600"),
            ]
        return Response(b"", 204, headers=cors)
    try:
        client, claims = await http_client(hub, request, bearer_token(request))
        if not request.content_type.lower().startswith("application/json"):
            raise ChannelError(ErrorCode.BAD_REQUEST, "send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except Exception:
            raise ChannelError(ErrorCode.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict) or "data" not in body:
            raise ChannelError(ErrorCode.BAD_REQUEST, "a publication is {channel, data}")
        channel = body.get("channel")
        if not isinstance(channel, str) or not CHANNEL_NAME.match(channel):
            raise ChannelError(ErrorCode.BAD_REQUEST, "channel missing or not a valid name")
        key = check_idempotency_key(body["idempotency_key"]) if "idempotency_key" in body else None
        data = body["data"]
        if not is_strict_json(data):
            raise ChannelError(ErrorCode.BAD_REQUEST, "data is not JSON (NaN or Infinity)")
        rule, params = hub.rule(channel)
        hub.check_client_publish(rule, len(dump_json(data)))
        if rule.token and (claims is None or not claims.allows(channel)):
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "token does not allow channel")
        # Without a token, the name is the client's own choice: its address is who it is.
        user = token_user(client, claims)
        who = ("user", user) if user is not None else ("address", request.client)
        take_rate(hub, http_buckets(hub), (rule, who), rule)
        take_address_rate(hub, request.client)
        refuse_when_shutting_down(request)
        context = ChannelContext(channel, params, client, claims, request)
        scope = who if user is not None else (*who, client.user or "")
        position = await hub.client_publish(rule, context, data, key, scope, body.get("tags"))
        return JSONResponse({"offset": position.offset, "epoch": position.epoch}, headers=cors)
    except ChannelError as exc:
        hub.stats.refused += 1
        return http_error(exc, cors)
