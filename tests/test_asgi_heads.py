"""ResponseHeads: the hosted app's response headers encoded once per distinct field list, and
HTTPCycle's reuse of the last answer's encoding."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rtserve.asgi.http import HTTPCycle, ResponseHeads

PLAIN = [(b"content-type", b"text/plain"), (b"content-length", b"5")]


def test_the_same_fields_are_encoded_once_and_answer_the_same() -> None:
    heads = ResponseHeads()
    first = heads.encode(PLAIN)
    again = heads.encode(list(PLAIN))  # built anew, equal
    assert first == (b"content-type: text/plain\r\n", 5)
    assert again is first


def test_a_list_changed_in_place_is_encoded_anew() -> None:
    heads = ResponseHeads()
    fields = list(PLAIN)
    heads.encode(fields)
    fields[0] = (b"content-type", b"text/html")
    assert heads.encode(fields) == (b"content-type: text/html\r\n", 5)


def test_fields_as_lists_are_encoded_each_time() -> None:
    heads = ResponseHeads()
    field = [b"x-a", b"1"]
    fields: list[Any] = [field]
    assert heads.encode(fields) == (b"x-a: 1\r\n", None)
    field[1] = b"2"
    assert heads.encode(fields) == (b"x-a: 2\r\n", None)


def test_a_one_pass_iterator_of_lists_is_encoded_whole() -> None:
    heads = ResponseHeads()
    fields = iter([[b"x-a", b"1"], [b"x-b", b"2"]])
    assert heads.encode(fields) == (b"x-a: 1\r\nx-b: 2\r\n", None)


def test_the_cache_is_bounded() -> None:
    heads = ResponseHeads(size=4)
    for n in range(10):
        assert heads.encode([(b"content-length", str(n).encode())]) == (b"", n)
    assert len(heads) <= 4


def test_a_bad_field_is_refused_every_time() -> None:
    heads = ResponseHeads()
    for _ in range(2):
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            heads.encode([(b"x-a", b"1\r\nx-b: 2")])


class _Exchange:
    """What HTTPCycle.send needs of an Exchange for a whole response: the answers given."""

    started = finished = closed = False

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes, bytes]] = []

    def respond(self, status: int, headers: bytes, body: bytes) -> None:
        self.answers.append((status, headers, body))
        self.started = self.finished = True


def _answered_head(heads: ResponseHeads, fields: Any) -> bytes:
    """The encoded head fields of a response the app starts with `fields`."""
    exchange = _Exchange()
    cycle = HTTPCycle(exchange, heads)  # type: ignore[arg-type]

    async def app() -> None:
        await cycle.send({"type": "http.response.start", "status": 200, "headers": fields})
        await cycle.send({"type": "http.response.body", "body": b"hello"})

    asyncio.run(app())
    [(status, head, body)] = exchange.answers
    assert (status, body) == (200, b"hello")
    return head


def test_an_answer_with_the_last_fields_reuses_their_encoding() -> None:
    heads = ResponseHeads()
    first = _answered_head(heads, PLAIN)
    assert first == b"content-type: text/plain\r\n"
    assert _answered_head(heads, list(PLAIN)) is first  # equal, built anew
    fields = list(PLAIN)
    fields[0] = (b"content-type", b"text/html")  # the last answer's list, changed in place
    assert _answered_head(heads, fields) == b"content-type: text/html\r\n"
    fields.append((b"x-a", b"1"))
    assert _answered_head(heads, fields) == b"content-type: text/html\r\nx-a: 1\r\n"


def test_fields_given_as_lists_are_never_taken_for_the_last_ones() -> None:
    heads = ResponseHeads()
    field = [b"x-a", b"1"]
    assert _answered_head(heads, [field]) == b"x-a: 1\r\n"
    field[1] = b"2"
    assert _answered_head(heads, [field]) == b"x-a: 2\r\n"
    assert _answered_head(heads, [(b"x-a", b"3")]) == b"x-a: 3\r\n"
    assert _answered_head(heads, [[b"x-a", b"3"]]) == b"x-a: 3\r\n"
