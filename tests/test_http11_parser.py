"""The sans-I/O HTTP/1.1 parser: tables of requests fed whole, byte by byte, and in pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.errors import ProtocolError
from rtserve.protocol.http11 import (
    END_OF_MESSAGE,
    RequestHead,
    RequestParser,
    UpgradeRequested,
    encode_chunk,
    encode_headers,
    response_head,
)


def feed_all(data: bytes, step: int | None = None, **limits: int) -> list[object]:
    parser = RequestParser(**limits)  # type: ignore[arg-type]
    if step is None:
        return list(parser.feed(data))
    events: list[object] = []
    for i in range(0, len(data), step):
        events.extend(parser.feed(data[i : i + step]))
    return events


def squash(events: list[object]) -> list[object]:
    """Join adjacent body pieces so different feed splits compare equal."""
    out: list[object] = []
    for event in events:
        if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + event
        else:
            out.append(event)
    return out


GOOD = [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/", b""),
    (b"GET /a%20b/c?x=1&y=2 HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/a b/c", b""),
    (b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "POST", "/p", b"hello"),
    (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        "POST",
        "/c",
        b"hello world",
    ),
    (b"GET http://example.test/abs?q HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/abs", b""),
    (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS", "*", b""),
    (b"GET /old HTTP/1.0\r\n\r\n", "GET", "/old", b""),
]


@pytest.mark.parametrize(("raw", "method", "path", "body"), GOOD)
@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_good_requests(raw: bytes, method: str, path: str, body: bytes, step: int | None) -> None:
    events = squash(feed_all(raw, step))
    head = events[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.path) == (method, path)
    assert events[-1] is END_OF_MESSAGE
    got_body = b"".join(e for e in events if isinstance(e, bytes))
    assert got_body == body


def test_head_details() -> None:
    [head, end] = feed_all(
        b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\nX-Two: 1\r\nx-two: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert isinstance(head, RequestHead) and end is END_OF_MESSAGE
    assert head.query_string == b"a=1"
    assert head.headers == [
        (b"Host", b"h"),
        (b"X-Two", b"1"),
        (b"x-two", b"2"),
        (b"Expect", b"100-continue"),
    ]
    assert head.expect_continue and head.keep_alive and head.version == "1.1"


def test_keep_alive_rules() -> None:
    [h10, _] = feed_all(b"GET / HTTP/1.0\r\n\r\n")
    [h10ka, _] = feed_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    [h11c, _] = feed_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert isinstance(h10, RequestHead) and not h10.keep_alive
    assert isinstance(h10ka, RequestHead) and h10ka.keep_alive
    assert isinstance(h11c, RequestHead) and not h11c.keep_alive


@pytest.mark.parametrize(
    "field",
    [
        b"",
        b"Connection: keep-alive\r\n",
        b"Connection: close\r\n",
        b"connection: Upgrade\r\n",
        b"Proxy-Connection: keep-alive\r\n",
        b"PROXY-CONNECTION: close\r\n",
    ],
)
@pytest.mark.parametrize("version", [b"0.9", b"1.0", b"1.1", b"2.0"])
def test_version_is_the_request_lines_whatever_the_connection_fields(
    version: bytes, field: bytes
) -> None:
    # The parser reads the version from llhttp's keep-alive answer when no field changes it
    # (Connection and Proxy-Connection both do): each pipelined request gets its own.
    raw = b"GET / HTTP/%s\r\nHost: a\r\n%s\r\n" % (version, field)
    ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    if version in (b"0.9", b"2.0"):
        with pytest.raises(ProtocolError) as info:
            feed_all(ok + raw)
        assert info.value.status == 505
        return
    keep_open = b"close" not in field and (version == b"1.1" or b"keep-alive" in field)
    # A request that closes the connection must come last.
    events = feed_all(raw + ok if keep_open else ok + raw)
    heads = [e for e in events if isinstance(e, RequestHead)]
    own = version.decode()
    assert [h.version for h in heads] == ([own, "1.1"] if keep_open else ["1.1", own])
    assert heads[0 if keep_open else 1].keep_alive == keep_open


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
def test_http10_with_transfer_encoding_is_not_kept_alive(connection: bytes) -> None:
    # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; the server
    # answers it and then closes the connection.
    raw = b"POST / HTTP/1.0\r\n%sTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    head, body, end = feed_all(raw % connection)
    assert isinstance(head, RequestHead) and head.chunked and not head.keep_alive
    assert (body, end) == (b"abc", END_OF_MESSAGE)
    with pytest.raises(ProtocolError) as info:  # nothing may follow it, as after a close
        feed_all(raw % connection + b"GET / HTTP/1.0\r\n\r\n")
    assert info.value.status == 400


def test_pipelined_requests_come_out_in_order() -> None:
    raw = b"".join(f"GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
    for step in (None, 1, 5):
        heads = [e for e in feed_all(raw, step) if isinstance(e, RequestHead)]
        assert [h.path for h in heads] == [f"/{i}" for i in range(5)]


BAD = [
    # (request, status)
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nExpect: something-else\r\n\r\n", 417),
    # Several Transfer-Encoding fields are one list: gzip, chunked is not just chunked.
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        501,
    ),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # asterisk-form is for OPTIONS only
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 505),  # HTTP/0.9
    (b"GET http://u@b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # userinfo
    (b"GET ftp://b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http://b/ HTTP/1.1\r\n\r\n", 400),  # absolute-form still needs Host in 1.1
    # Host is host[:port] (RFC 9112 3.2, RFC 3986 3.2.2).
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a#b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a:70000\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", 400),
    (b"GET http://a:x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
]


@pytest.mark.parametrize(("raw", "status"), BAD)
@pytest.mark.parametrize("step", [None, 1])
def test_bad_requests(raw: bytes, status: int, step: int | None) -> None:
    with pytest.raises(ProtocolError) as info:
        feed_all(raw, step)
    assert info.value.status == status


def test_dead_parser_stays_dead() -> None:
    parser = RequestParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"BAD\r\n\r\n")
    with pytest.raises(ProtocolError):
        parser.feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("step", [None, 1, 100])
def test_head_size_limit(step: int | None) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        feed_all(raw, step, max_head_size=1024)
    assert info.value.status == 431
    assert feed_all(raw, step, max_head_size=4096)[-1] is END_OF_MESSAGE


def test_head_limit_without_end_of_head() -> None:
    parser = RequestParser(max_head_size=1024)
    parser.feed(b"GET / HTTP/1.1\r\nX: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            parser.feed(b"a" * 100)
    assert info.value.status == 431


def test_url_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        feed_all(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 512, max_head_size=1024)
    assert info.value.status == 414  # URI Too Long, not a header problem


def test_header_count_limit() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20))
    raw += b"\r\n"
    with pytest.raises(ProtocolError) as info:
        feed_all(raw, max_headers=10)
    assert info.value.status == 431


def test_body_limits() -> None:
    with pytest.raises(ProtocolError) as info:
        feed_all(b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", max_body_size=1000)
    assert info.value.status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"100\r\n" + b"a" * 256
    with pytest.raises(ProtocolError) as info:
        feed_all(chunked + b"\r\n" + b"100\r\n" + b"a" * 256 + b"\r\n", max_body_size=300)
    assert info.value.status == 413


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 3\r\n\r\nabc",
    ],
)
def test_host_rules_and_upgrade_with_body(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        feed_all(raw)
    assert info.value.status == 400


def test_upgrade_is_reported_with_following_bytes() -> None:
    events = feed_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nXYZ"
    )
    assert isinstance(events[0], RequestHead) and events[0].upgrade
    assert events[-1] == UpgradeRequested(b"XYZ")


@pytest.mark.parametrize(
    ("raw", "upgrade"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", False),  # no Connection
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", True),
        (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", True),  # llhttp hands CONNECT over too
    ],
)
def test_upgrade_is_llhttps_whether_or_not_it_is_asked(raw: bytes, upgrade: bool) -> None:
    # The parser asks llhttp only when a Connection field or CONNECT can make it an upgrade.
    head, *rest = feed_all(raw)
    assert isinstance(head, RequestHead) and head.upgrade is upgrade
    assert rest[-1] == (UpgradeRequested(b"") if upgrade else END_OF_MESSAGE)


def test_response_serialisation() -> None:
    head = response_head(
        200,
        [(b"content-type", b"text/plain")],
        content_length=5,
        keep_alive=True,
        date=b"date: x\r\n",
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: x\r\n\r\n"
    )
    chunked = response_head(201, [], content_length=None, keep_alive=False, date=b"")
    assert chunked == (
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert b"content-length" not in response_head(
        304, [], content_length=10, keep_alive=True, date=b""
    )
    whole = response_head(
        200, b"x: y\r\n", content_length=3, keep_alive=True, date=b"", server=b"s\r\n", body=b"abc"
    )
    assert whole == b"HTTP/1.1 200 OK\r\nx: y\r\ncontent-length: 3\r\ns\r\n\r\nabc"
    for n in (7, 7, 0, 1023, 1024, 5000, 5000):  # short lengths' lines are made once, kept
        made = response_head(200, b"", content_length=n, keep_alive=True, date=b"")
        assert made == b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n" and encode_chunk(b"") == b""


@pytest.mark.parametrize("bad", [(b"x", b"a\r\nInjected: 1"), (b"x:y", b"1"), (b"", b"1")])
def test_header_injection_refused(bad: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        encode_headers([bad])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_random_bytes_never_escape_as_other_errors(data: bytes, step: int) -> None:
    parser = RequestParser(max_head_size=256, max_body_size=256)
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
    except ProtocolError as exc:
        assert 400 <= exc.status < 600


VALID = b"POST /submit?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(VALID) - 1),
    st.integers(0, 255),
    st.integers(min_value=1, max_value=20),
)
def test_mutated_requests_parse_or_fail_cleanly(pos: int, byte: int, step: int) -> None:
    data = VALID[:pos] + bytes([byte]) + VALID[pos + 1 :]
    parser = RequestParser(max_head_size=256)
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
    except ProtocolError as exc:
        assert exc.status in (400, 413, 414, 417, 431, 501, 505)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8))
def test_chunked_body_round_trip(pieces: list[bytes]) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"".join(encode_chunk(p) for p in pieces) + b"0\r\n\r\n"
    for step in (None, 1, 9):
        events = feed_all(raw, step)
        assert b"".join(e for e in events if isinstance(e, bytes)) == b"".join(pieces)
        assert events[-1] is END_OF_MESSAGE


class RecordingSink:
    def __init__(self, fail_on_head: bool = False) -> None:
        self.calls: list[object] = []
        self.fail_on_head = fail_on_head

    def request_head(self, head: RequestHead) -> None:
        if self.fail_on_head:
            raise ValueError("the sink broke")
        self.calls.append(head.path)

    def request_body(self, data: bytes) -> None:
        self.calls.append(data)

    def request_end(self) -> None:
        self.calls.append("end")

    def request_upgrade(self, data: bytes) -> None:
        self.calls.append(("upgrade", data))


def test_sink_receives_what_the_parser_reads() -> None:
    sink = RecordingSink()
    parser = RequestParser(sink=sink)
    assert parser.feed(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi") == []
    assert (
        parser.feed(b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n!")
        == []
    )
    assert sink.calls == ["/a", b"hi", "end", "/b", "end", ("upgrade", b"!")]


def test_sink_failure_is_not_blamed_on_the_client() -> None:
    parser = RequestParser(sink=RecordingSink(fail_on_head=True))
    with pytest.raises(ValueError, match="the sink broke"):
        parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")


def test_absolute_form_target_replaces_host() -> None:
    raw = b"GET http://b.example:81/p?q=1 HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n"
    for step in (None, 1):
        head = feed_all(raw, step)[0]
        assert isinstance(head, RequestHead)
        assert (head.target, head.path, head.query_string) == (b"/p?q=1", "/p", b"q=1")
        assert head.authority == b"b.example:81"
        assert head.headers == [(b"X", b"y"), (b"host", b"b.example:81")]


def test_options_asterisk() -> None:
    head = feed_all(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    assert isinstance(head, RequestHead) and head.path == "*"


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("step", [1, 100, 1000])
def test_chunk_extensions_are_bounded(step: int) -> None:
    parser = RequestParser(max_head_size=1024)
    parser.feed(CHUNKED_HEAD)
    data = b"5;x=" + b"y" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
    assert info.value.status == 400


@pytest.mark.parametrize("step", [None, 1, 7, 4096])
def test_many_small_chunks_with_extensions_pass(step: int | None) -> None:
    body = b"".join(b"1;n=%d\r\n%c\r\n" % (i, 97 + i % 26) for i in range(2000))
    events = feed_all(CHUNKED_HEAD + body + b"0\r\n\r\n", step, max_head_size=1024)
    assert len(b"".join(e for e in events if isinstance(e, bytes))) == 2000
    assert events[-1] is END_OF_MESSAGE


def joined(calls: list[object]) -> list[object]:
    """A sink's calls with each run of body pieces as one."""
    out: list[object] = []
    for call in calls:
        if isinstance(call, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += call
        else:
            out.append(call)
    return out


# A pipeline whose bodies hold blank lines: pieces are cut at a `\r\n\r\n` in a body too, except
# in the part of a Content-Length body the parser knows is coming.
PIPELINE = (
    b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(40))
    + b"POST /cl HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    + b"POST /te HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"8\r\n\r\n\r\nab\r\n\r\n0\r\n\r\n"
    + b"".join(b"GET /x%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(10))
)


@pytest.mark.parametrize("budget", [1, 2, 5, 16, 1000])
def test_feed_until_reads_a_bounded_number_of_heads_per_call(budget: int) -> None:
    whole = RecordingSink()
    RequestParser(sink=whole).feed(PIPELINE)
    sink = RecordingSink()
    parser = RequestParser(sink=sink)
    position, calls = 0, 0
    while position < len(PIPELINE):
        heads_before = sum(isinstance(c, str) and c.startswith("/") for c in sink.calls)
        stop = parser.feed_until(PIPELINE, budget, position)
        heads = sum(isinstance(c, str) and c.startswith("/") for c in sink.calls) - heads_before
        assert position < stop <= len(PIPELINE)
        assert heads <= budget
        position, calls = stop, calls + 1
        assert calls <= len(PIPELINE)  # bounded
    assert joined(sink.calls) == joined(whole.calls)  # the same requests and bodies
    assert calls == 1 if budget == 1000 else calls >= 52 // budget


def test_feed_until_hands_an_upgrade_everything_after_its_head() -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    after = b"frame\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    sink = RecordingSink()
    parser = RequestParser(sink=sink)
    data = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" + upgrade + after
    assert parser.feed_until(data, 1) < len(data)  # stopped after /a
    assert parser.feed_until(data, 1, data.index(upgrade)) == len(data)
    assert sink.calls == ["/a", "end", "/ws", "end", ("upgrade", after)]
