"""The fossil delta codec (rtserve.protocol.fossil): fixed vectors written from the format's
description, round trips of arbitrary bytes, and malformed deltas that fail cleanly."""

from __future__ import annotations

import contextlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.protocol.fossil import (
    DeltaError,
    apply_delta,
    checksum,
    create_delta,
    encode_int,
    output_size,
)

# 0x61626300, "abc" as one big-endian word padded with a zero byte: 01 100001 011000 100110
# 001100 000000 in fossil's digits.
ABC_SUM = b"1XObC0"


@pytest.mark.parametrize(
    ("value", "digits"),
    [(0, b"0"), (9, b"9"), (10, b"A"), (35, b"Z"), (36, b"_"), (37, b"a"), (63, b"~"),
     (64, b"10"), (4095, b"~~"), (4096, b"100")],
)  # fmt: skip
def test_integers_are_base_64_most_significant_first(value: int, digits: bytes) -> None:
    assert encode_int(value) == digits


def test_checksum_sums_big_endian_words_padding_the_last() -> None:
    assert checksum(b"") == 0
    assert checksum(b"abc") == 0x61626300
    assert checksum(b"abcd" * 2 + b"e") == (2 * 0x61626364 + 0x65000000) & 0xFFFFFFFF
    assert checksum(b"\xff" * 8) == (2 * 0xFFFFFFFF) & 0xFFFFFFFF  # wraps modulo 2**32
    assert encode_int(checksum(b"abc")) == ABC_SUM


@pytest.mark.parametrize(
    ("source", "delta", "target"),
    [
        (b"", b"3\n3:abc" + ABC_SUM + b";", b"abc"),  # one insert
        (b"xxabcxx", b"3\n3@2," + ABC_SUM + b";", b"abc"),  # one copy
        (b"ab", b"3\n2@0,1:c" + ABC_SUM + b";", b"abc"),  # a copy, then an insert
        (b"anything", b"0\n0;", b""),  # the empty target
    ],
)
def test_fixed_deltas_apply_as_the_format_says(source: bytes, delta: bytes, target: bytes) -> None:
    assert output_size(delta) == len(target)
    assert apply_delta(source, delta) == target


def test_the_encoder_writes_copies_and_inserts_of_the_format() -> None:
    source = b"abcdefghijklmnopqrstuvwxyz1234567890"
    target = b"abcdefghijklmnopqrstuvwxyz0987654321"
    sum_ = encode_int(checksum(target))
    # 36 bytes; copy 26 (Q) from 0; insert the 10 (A) new ones; the checksum.
    assert create_delta(source, target) == b"_\nQ@0,A:0987654321" + sum_ + b";"
    assert create_delta(source, source) == b"_\n_@0," + encode_int(checksum(source)) + b";"
    assert create_delta(b"short", b"abc") == b"3\n3:abc" + ABC_SUM + b";"  # no block to copy


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600))
def test_any_bytes_round_trip(source: bytes, target: bytes) -> None:
    assert apply_delta(source, create_delta(source, target)) == target


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=17, max_size=2000),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 40), st.binary(max_size=40))),
)
def test_edits_of_a_source_round_trip_and_copy(
    source: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    """Targets made by splicing a source (as a changing state is) round trip, and a target
    that keeps most of its source makes a delta smaller than itself."""
    target = source
    for at, cut, new in edits:
        at %= len(target) + 1
        target = target[:at] + new + target[at + cut :]
    delta = create_delta(source, target)
    assert apply_delta(source, delta) == target
    if target == source:
        assert len(delta) < len(target) or len(target) < 40


def test_a_dashboard_state_changing_two_percent_gives_a_small_delta() -> None:
    rng = random.Random(7)
    state = {f"metric_{i}": {"value": rng.random() * 1000, "unit": "ms"} for i in range(100)}
    before = json.dumps(state).encode()
    for key in rng.sample(sorted(state), 2):
        state[key]["value"] = rng.random() * 1000
    after = json.dumps(state).encode()
    delta = create_delta(before, after)
    assert apply_delta(before, delta) == after
    assert len(delta) * 20 < len(after)
    assert delta.isascii()  # ASCII in, ASCII out: a delta of JSON text is a JSON string


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_garbage_fails_cleanly_or_applies(source: bytes, delta: bytes) -> None:
    """Whatever the bytes, applying ends: a target (checksum verified) or DeltaError."""
    with contextlib.suppress(DeltaError):
        apply_delta(source, delta, max_size=1000)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.binary(max_size=300), st.data())
def test_a_changed_byte_is_caught(source: bytes, target: bytes, data: st.DataObject) -> None:
    """Flip one byte of a good delta: it fails with DeltaError, or builds the same target
    (a flipped literal that the checksum still catches is the common case)."""
    delta = bytearray(create_delta(source, target))
    at = data.draw(st.integers(0, len(delta) - 1))
    delta[at] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(DeltaError):
        assert apply_delta(source, bytes(delta)) == target


@pytest.mark.parametrize(
    ("delta", "error"),
    [
        (b"", "integer expected"),
        (b"3", "header does not end"),
        (b"3\n3:abc", "ends without its checksum"),
        (b"3\n3:ab", "past the end of the delta"),
        (b"3\n4:abcd" + ABC_SUM + b";", "more than the size"),
        (b"3\n9@0," + ABC_SUM + b";", "outside the source"),
        (b"3\n2@0;", "not ended by ','"),
        (b"3\n3:abc" + b"1XObC1;", "checksum mismatch"),
        (b"4\n3:abc" + ABC_SUM + b";", "header says 4"),
        (b"3\n3:abc" + ABC_SUM + b";x", "after the checksum"),
        (b"3\n3!abc", "unknown delta command '!'"),
        (b"~~~~~~~~~~~~~~~~~~~~\n", "more than 12 digits"),
        (b"~~~~~~~\n0;", "at most 1000 are allowed"),
    ],
)
def test_malformed_deltas_say_what_is_wrong(delta: bytes, error: str) -> None:
    with pytest.raises(DeltaError, match=error):
        apply_delta(b"xxxxxxx", delta, max_size=1000)


def test_the_size_cap_holds_before_anything_is_built() -> None:
    huge = encode_int(2**40) + b"\n1:a0;"
    with pytest.raises(DeltaError, match="at most"):
        apply_delta(b"", huge)
    assert isinstance(DeltaError("x"), ValueError)
