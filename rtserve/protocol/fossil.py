"""Fossil deltas (the format of the Fossil SCM, which centrifuge-js reads too), sans-I/O.

A delta turns a source into a target. It is ASCII framing around the target's new bytes:

    <size>\\n          the target's length
    <cnt>@<offset>,    copy cnt bytes of the source from offset
    <cnt>:<bytes>      insert the next cnt bytes of the delta
    <checksum>;        the target's checksum; the delta ends here

Integers are written most significant digit first in base 64 with the digits
`0-9 A-Z _ a-z ~`. The checksum is the sum, modulo 2**32, of the target read as big-endian
32-bit words (the last one padded with zero bytes). An ASCII source and target give an ASCII
delta.

`create_delta` finds copies as fossil's encoder does: the source is indexed in 16-byte
blocks, a 16-byte window slides over the target, and a window that is a source block grows
into the longest match around it. The window's hash is CPython's over the slice, which is
cheaper here than a rolling hash stepped in Python. `apply_delta` checks every command
against the sizes it was given, never allocates more than the header's size (which is
capped), and ends within one pass over the delta.
"""

from __future__ import annotations

import sys
from array import array

from rtserve.errors import RtserveError

DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_VALUE = [-1] * 256
for _value, _digit in enumerate(DIGITS):
    _VALUE[_digit] = _value
del _value, _digit

BLOCK = 16  # bytes of the source blocks and of the window over the target
MAX_CANDIDATES = 8  # source blocks tried for one window (fossil tries up to 250)
MAX_DIGITS = 12  # 64**12 = 2**72: more digits is no size a delta can mean
DEFAULT_MAX_SIZE = 16 * 1024 * 1024  # largest target apply_delta builds unless told


class DeltaError(RtserveError, ValueError):
    """A delta that cannot be applied to this source: malformed, too large, or its checksum
    does not match what it built."""


def checksum(data: bytes) -> int:
    """The fossil checksum of `data`: its big-endian 32-bit words summed modulo 2**32."""
    words = array("I")
    if words.itemsize != 4:  # pragma: no cover - every platform CPython runs on today
        words = array("L")
    words.frombytes(data + b"\0" * (-len(data) % 4))
    if sys.byteorder == "little":
        words.byteswap()
    return sum(words) & 0xFFFFFFFF


def encode_int(value: int) -> bytes:
    """`value` (>= 0) in fossil's base-64 digits."""
    if value == 0:
        return b"0"
    out = bytearray()
    while value:
        out.append(DIGITS[value & 63])
        value >>= 6
    out.reverse()
    return bytes(out)


def _digits(value: int) -> int:
    """How many digits `encode_int(value)` writes."""
    return max(1, (value.bit_length() + 5) // 6)


def _forward(a: bytes, ai: int, b: bytes, bi: int) -> int:
    """How many bytes `a[ai:]` and `b[bi:]` have in common at their start."""
    limit = min(len(a) - ai, len(b) - bi)
    done = 0
    step = 64
    while done < limit:
        size = min(step, limit - done)
        diff = int.from_bytes(a[ai + done : ai + done + size], "big") ^ int.from_bytes(
            b[bi + done : bi + done + size], "big"
        )
        if diff:
            return done + size - (diff.bit_length() + 7) // 8
        done += size
        step *= 2
    return done


def _backward(a: bytes, ai: int, b: bytes, bi: int, limit: int) -> int:
    """How many bytes (at most `limit`) `a[:ai]` and `b[:bi]` have in common at their end."""
    done = 0
    step = 16
    while done < limit:
        size = min(step, limit - done)
        diff = int.from_bytes(a[ai - done - size : ai - done], "little") ^ int.from_bytes(
            b[bi - done - size : bi - done], "little"
        )
        if diff:
            return done + size - (diff.bit_length() + 7) // 8
        done += size
        step *= 2
    return done


def _index(source: bytes) -> dict[bytes, list[int]]:
    """Where each 16-byte block of the source starts (blocks at multiples of 16)."""
    index: dict[bytes, list[int]] = {}
    for start in range(0, len(source) - BLOCK + 1, BLOCK):
        block = source[start : start + BLOCK]
        found = index.get(block)
        if found is None:
            index[block] = [start]
        elif len(found) < MAX_CANDIDATES:
            found.append(start)
    return index


def create_delta(source: bytes, target: bytes) -> bytes:
    """The delta that turns `source` into `target`."""
    out = [encode_int(len(target)), b"\n"]
    size = len(target)
    base = 0  # target bytes before this are written
    if len(source) > BLOCK:
        index = _index(source)
        at = 0  # where the window over the target starts
        while at + BLOCK <= size:
            starts = index.get(target[at : at + BLOCK])
            if starts is None:
                at += 1
                continue
            best = best_back = best_start = 0
            for start in starts:
                back = _backward(source, start, target, at, min(start, at - base))
                count = back + BLOCK + _forward(source, start + BLOCK, target, at + BLOCK)
                offset = start - back
                cost = _digits(at - back - base) + _digits(count) + _digits(offset) + 3
                if count >= cost and count > best:
                    best, best_back, best_start = count, back, offset
            if not best:
                at += 1
                continue
            literal = at - best_back
            if literal > base:
                out += (encode_int(literal - base), b":", target[base:literal])
            out += (encode_int(best), b"@", encode_int(best_start), b",")
            base = at = literal + best
    if base < size:
        out += (encode_int(size - base), b":", target[base:])
    out += (encode_int(checksum(target)), b";")
    return b"".join(out)


class _Reader:
    """The delta being read: its bytes and a position."""

    __slots__ = ("at", "delta")

    def __init__(self, delta: bytes) -> None:
        self.delta = delta
        self.at = 0

    def integer(self) -> int:
        delta = self.delta
        start = at = self.at
        value = 0
        end = min(len(delta), start + MAX_DIGITS + 1)
        while at < end and (digit := _VALUE[delta[at]]) >= 0:
            value = (value << 6) | digit
            at += 1
        if at == start:
            if start == len(delta) and start:
                raise DeltaError("the delta ends without its checksum")
            raise DeltaError(f"integer expected at byte {start}")
        if at - start > MAX_DIGITS:
            raise DeltaError(f"integer of more than {MAX_DIGITS} digits at byte {start}")
        self.at = at
        return value

    def operator(self) -> int:
        if self.at >= len(self.delta):
            raise DeltaError("the delta ends without its checksum")
        op = self.delta[self.at]
        self.at += 1
        return op


def _header(delta: bytes) -> tuple[int, _Reader]:
    """The target's length, and a reader at the first command."""
    reader = _Reader(delta)
    size = reader.integer()
    if delta[reader.at : reader.at + 1] != b"\n":
        raise DeltaError("the size in the header does not end with a newline")
    reader.at += 1
    return size, reader


def output_size(delta: bytes) -> int:
    """The target's length, from the delta's header."""
    return _header(delta)[0]


def apply_delta(source: bytes, delta: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The target `delta` builds from `source`, checksum verified.

    DeltaError when the delta is malformed, copies outside the source, builds other than the
    size its header gives, a size over `max_size`, or a target whose checksum differs.
    """
    size, reader = _header(delta)
    if size > max_size:
        raise DeltaError(f"the delta makes {size} bytes; at most {max_size} are allowed")
    out = bytearray()
    while True:
        count = reader.integer()
        op = reader.operator()
        if op == ord("@"):
            offset = reader.integer()
            if reader.operator() != ord(","):
                raise DeltaError(f"copy command not ended by ',' at byte {reader.at - 1}")
            if offset + count > len(source):
                raise DeltaError(f"copy of {count} bytes at {offset} is outside the source")
            if len(out) + count > size:
                raise DeltaError("a copy makes more than the size in the header")
            out += source[offset : offset + count]
        elif op == ord(":"):
            if len(out) + count > size:
                raise DeltaError("an insert makes more than the size in the header")
            if reader.at + count > len(delta):
                raise DeltaError(f"insert of {count} bytes past the end of the delta")
            out += delta[reader.at : reader.at + count]
            reader.at += count
        elif op == ord(";"):
            if reader.at != len(delta):
                raise DeltaError(f"{len(delta) - reader.at} bytes after the checksum")
            if len(out) != size:
                raise DeltaError(f"the delta made {len(out)} bytes, its header says {size}")
            if checksum(bytes(out)) != count:
                raise DeltaError("checksum mismatch: the delta is not for this source")
            return bytes(out)
        else:
            raise DeltaError(f"unknown delta command {chr(op)!r} at byte {reader.at - 1}")
