"""The channel wire protocol against hostile input: hypothesis over `parse_command` and over
live /rt/ws sessions.

tests/test_channel_core.py already fuzzes parse_command with random text, bytes and objects
of the known keys; here: real op names with hostile field values, NaN/Infinity, deep nesting,
and byte-level mutations of valid commands. Live: random command sequences (garbage, binary,
every op, good and bad fields) on one connection each; every id is answered at most once, in
order, and exactly once unless the server closed the connection with a documented code.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtserve import App, ChannelSettings
from rtserve.realtime.protocol import (
    MAX_BATCH,
    OPS,
    Command,
    CommandError,
    ErrorCode,
    parse_command,
    parse_frame,
)
from rtserve.testing import ThreadedServer
from rtserve.tokens import mint

SECRET = "a-test-secret-of-32-characters!!"
PARSE_CODES = {ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_OP}
# What /rt/ws may close with (docs/protocol.md); 1009 is out of reach of these small inputs.
CLOSE_CODES = {4000, 4001, 4002, 4003, 4004, 4005, 4006}
FIELDS = [
    "id",
    "op",
    "channel",
    "data",
    "token",
    "since",
    "limit",
    "idempotency_key",
    "protocol",
    "method",
    "reverse",
    "group",
    "presence_diff",
]


def _strict(name: str) -> Any:
    raise ValueError(name)


def assert_strict_json(data: bytes) -> None:
    """What the server would send on is JSON that browsers parse (no NaN, no Infinity)."""
    json.loads(data, parse_constant=_strict)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
channels = st.sampled_from(
    ["news", "chat:a", "user:1", "secret", "nope", "", "bad name", "x" * 256]
)
field_values = {
    "id": st.integers(min_value=-3, max_value=2**64) | values,
    "op": st.sampled_from(sorted(OPS)) | st.text(max_size=12) | values,
    "channel": channels | values,
    "data": values,
    "token": st.sampled_from(["", "x.y.z", "a" * 300]) | values,
    "since": st.fixed_dictionaries(
        {"offset": st.integers(min_value=-2, max_value=2**64) | values, "epoch": values}
    )
    | values,
    "limit": st.integers(min_value=-2, max_value=2**64) | values,
    "idempotency_key": st.text(max_size=300) | values,
    "protocol": st.sampled_from([1, 2, 3, 0, 2.0]) | values,
    "method": st.sampled_from(["add", "", "a b", "m" * 129]) | values,
    "reverse": st.booleans() | values,
    "group": st.sampled_from(["user", "client"]) | values,
    "presence_diff": st.booleans() | values,
    "subscriptions": st.lists(
        st.fixed_dictionaries(
            {"channel": channels | values},
            optional={"since": values, "token": st.sampled_from(["x.y.z"]) | values},
        )
        | values,
        max_size=4,
    )
    | values,
}
commands = st.fixed_dictionaries(
    {"op": field_values["op"]},
    optional={k: v for k, v in field_values.items() if k != "op"},
)


def check_parse(text: str | bytes) -> None:
    try:
        command = parse_command(text)
    except CommandError as exc:
        assert exc.code in PARSE_CODES, exc
        assert exc.id is None or (type(exc.id) is int and exc.id >= 0)
    else:
        assert command.op in OPS
        from rtserve.app.response import dump_json

        assert_strict_json(dump_json(command.data))


@settings(max_examples=400, deadline=None)
@given(commands)
def test_parse_command_on_hostile_fields(raw: dict[str, Any]) -> None:
    check_parse(json.dumps(raw))  # json.dumps writes NaN and Infinity for such floats


@settings(max_examples=200, deadline=None)
@given(st.lists(commands | values, min_size=0, max_size=6))
def test_parse_frame_on_hostile_batches(items: list[Any]) -> None:
    """A batch (protocol 2) is refused whole only when it is empty or too long; otherwise
    each item is a Command or the CommandError it gets when sent alone."""
    try:
        text = json.dumps(items, allow_nan=False)
    except ValueError:  # NaN or Infinity somewhere: the message is not JSON, refused whole
        with pytest.raises(CommandError):
            parse_frame(json.dumps(items))
        return
    try:
        batch = parse_frame(text)
    except CommandError as exc:
        assert not items and (exc.code, exc.id) == (ErrorCode.BAD_REQUEST, None)
        return
    assert isinstance(batch, list) and len(batch) == len(items) <= MAX_BATCH
    for item, parsed in zip(items, batch, strict=True):
        if isinstance(parsed, Command):
            assert parse_command(json.dumps(item)) == parsed
        else:
            assert parsed.code in PARSE_CODES
            with pytest.raises(CommandError):
                parse_command(json.dumps(item))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            b'{"id": 1, "op": "publish", "channel": "chat:a", "data": {"x": [1, 2.5, "s"]}}',
            b'{"id": 2, "op": "subscribe", "channel": "news", "since": {"offset": 3, "epoch": ""}}',
            b'{"id": 3, "op": "connect", "token": "a.b.c", "data": null}',
            b'{"id": 4, "op": "history", "channel": "news", "limit": 10}',
        ]
    ),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_parse_command_on_mutated_bytes(base: bytes, mutations: list[tuple[int, int]]) -> None:
    data = bytearray(base)
    for index, value in mutations:
        data[index % len(data)] = value
    check_parse(bytes(data))


@pytest.mark.parametrize(
    "text",
    [
        '{"op": "publish", "channel": "c", "data": NaN}',
        '{"op": "publish", "channel": "c", "data": [Infinity]}',
        '{"op": "publish", "channel": "c", "data": {"x": -Infinity}}',
        '{"op": "publish", "channel": "c", "data": ' + nested(100_000) + "}",
        nested(100_000),
        '{"op": "ping", "id": ' + "9" * 5000 + "}",
        '{"op": "ping", "id": 1e400}',
        '{"op": "ping", "id": 1.0}',
        '{"op": "ping", "id": true}',
    ],
    ids=["nan", "infinity", "-infinity", "deep data", "deep", "huge id", "1e400", "1.0", "true"],
)
def test_parse_command_refuses_what_is_not_strict_json(text: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert info.value.code == ErrorCode.BAD_REQUEST


# --- live sessions ------------------------------------------------------------------------


def channel_app() -> App:
    settings_ = ChannelSettings(token_secret=SECRET, connect_timeout=5)
    app = App(channels=settings_)
    app.channel("news", history=10)
    app.channel("chat:*", history=10, presence=True, join_leave=True, publish="clients")
    app.channel("user:{id}", token=True, publish="clients")
    app.channel("secret", token=True)
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(channel_app(), access_log=False) as srv:
        yield srv


GOOD_TOKEN = mint(SECRET, "fuzz", channels=["user:1"])
good_commands = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS))},
    optional={
        "channel": channels,
        "data": values,
        "token": st.sampled_from(
            [GOOD_TOKEN, "x.y.z", mint(SECRET, "other", ttl=10, now=time.time() - 60)]
        ),
        "since": st.fixed_dictionaries(
            {"offset": st.integers(0, 20), "epoch": st.sampled_from(["", "e"])}
        ),
        "limit": st.integers(0, 20),
        "protocol": st.sampled_from([1, 2]),
        "method": st.sampled_from(["add", "nope"]),
        "reverse": st.booleans(),
        "group": st.just("user"),
        "presence_diff": st.booleans(),
        "subscriptions": st.lists(
            st.fixed_dictionaries(
                {"channel": channels},
                optional={
                    "since": st.fixed_dictionaries(
                        {"offset": st.integers(0, 5), "epoch": st.just("e")}
                    )
                },
            ),
            max_size=3,
        ),
    },
)
messages = st.lists(
    st.one_of(
        good_commands.map(lambda c: ("cmd", c)),
        good_commands.map(lambda c: ("cmd", c)),
        commands.map(lambda c: ("cmd", c)),
        st.text(max_size=30).map(lambda t: ("text", t)),
        st.binary(max_size=10).map(lambda b: ("binary", b)),
        st.lists(good_commands, min_size=1, max_size=4).map(lambda cs: ("batch", cs)),
    ),
    min_size=1,
    max_size=12,
)


def ws_count(server: ThreadedServer) -> int:
    assert server.server is not None and server.server.state is not None
    return len(server.server.state.websockets)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages)
def test_live_session_answers_each_id_once_or_closes_with_a_documented_code(
    server: ThreadedServer, sequence: list[tuple[str, Any]]
) -> None:
    url = f"ws://127.0.0.1:{server.port}/rt/ws"
    sent: list[int] = []
    replies: list[Any] = []
    close_code: int | None = None
    with connect(url, open_timeout=5, close_timeout=2) as ws:
        for n, (kind, item) in enumerate(sequence, start=1):
            try:
                if kind == "cmd":
                    command = dict(item)
                    command["id"] = n * 100  # unique and rising: "once, in order" is checked
                    ws.send(json.dumps(command))
                    sent.append(n * 100)
                elif kind == "batch":  # ids n * 100 + k: unique, and in order
                    batch = [{**c, "id": n * 100 + k} for k, c in enumerate(item)]
                    ws.send(json.dumps(batch))
                    sent.extend(c["id"] for c in batch)
                elif kind == "text":
                    ws.send(item)
                else:
                    ws.send(item)
            except ConnectionClosed:
                break
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                message = json.loads(ws.recv(timeout=1 if not sent else 5))
                if isinstance(message, dict) and "push" in message:
                    continue
                # a batch's answers come in arrays
                replies.extend(
                    m["id"] for m in (message if isinstance(message, list) else [message])
                )
                if sent and replies and replies[-1] == sent[-1]:
                    break
        except TimeoutError:
            pass
        except ConnectionClosed:
            pass
        if ws.close_code is None:
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                ws.recv(timeout=0.05)
        close_code = ws.close_code if ws.protocol.close_rcvd is not None else None
    event(f"closed {close_code}" if close_code else "stayed open")
    answered = [r for r in replies if r is not None]
    assert len(answered) == len(set(answered)), replies  # at most once
    assert answered == sorted(answered), replies  # in order
    assert set(answered) <= set(sent), (answered, sent)
    if close_code is None:
        assert answered == sent, (answered, sent)  # exactly once
    else:
        assert close_code in CLOSE_CODES, close_code
        # what was sent before the close was answered; what came after, perhaps not
        assert answered == sent[: len(answered)]


def test_the_server_survives_the_fuzzing(server: ThreadedServer) -> None:
    deadline = time.monotonic() + 5
    while ws_count(server) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ws_count(server) == 0
    with connect(f"ws://127.0.0.1:{server.port}/rt/ws", open_timeout=5) as ws:
        ws.send('{"id": 1, "op": "connect"}')
        assert json.loads(ws.recv(timeout=5))["id"] == 1
        ws.send('{"id": 2, "op": "ping"}')
        assert json.loads(ws.recv(timeout=5)) == {"id": 2, "result": {}}


def test_nan_and_infinity_are_refused_on_every_publish_path() -> None:
    """Python's json module reads NaN and Infinity; browsers' JSON.parse does not. A client
    that could publish them would break every subscriber of the channel."""
    app = App(channels=ChannelSettings(token_secret=SECRET, api_key="k" * 20))
    app.channel("chat:*", history=10, publish="clients")
    with ThreadedServer(app, access_log=False) as srv:
        url = f"ws://127.0.0.1:{srv.port}/rt/ws"
        with connect(url, open_timeout=5) as ws:
            ws.send('{"id": 1, "op": "connect"}')
            ws.send('{"id": 2, "op": "subscribe", "channel": "chat:a"}')
            ws.send('{"id": 3, "op": "publish", "channel": "chat:a", "data": [1, NaN]}')
            replies = [json.loads(ws.recv(timeout=5)) for _ in range(3)]
            assert replies[2]["error"]["code"] == ErrorCode.BAD_REQUEST
            assert ws.close_code is None or ws.close_code == 4000
        headers = {"Content-Type": "application/json"}
        cases = [
            ("/rt/client/publish", {}, '{"channel": "chat:a", "data": {"x": Infinity}}'),
            (
                "/rt/publish",
                {"Authorization": "Bearer " + "k" * 20},
                '{"channel": "chat:a", "data": NaN}',
            ),
            (
                "/rt/publish/batch",
                {"Authorization": "Bearer " + "k" * 20},
                '{"publications": [{"channel": "chat:a", "data": -Infinity}]}',
            ),
        ]
        for path, extra, body in cases:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            conn.request("POST", path, body=body, headers={**headers, **extra})
            reply = conn.getresponse()
            answer = json.loads(reply.read())
            conn.close()
            error = answer["results"][0]["error"] if "results" in answer else answer["error"]
            assert error["code"] == ErrorCode.BAD_REQUEST, (path, answer)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/rt/history?channel=chat:a")
        assert json.loads(conn.getresponse().read())["publications"] == []
        conn.close()
