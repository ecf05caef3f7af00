"""Durations and sizes written the way people write them in a config file.

Durations (`parse_duration`) are float seconds:

    10, 2.5, "10"       plain numbers are seconds
    "250ms" "10s"       milliseconds, seconds
    "1.5m" "2h" "1d"    minutes, hours, days
    "1h30m" "1m 30s"    several parts add up (each with a unit)

Sizes (`parse_size`) are int bytes:

    512, "512", "512B"              plain numbers are bytes
    "64KiB" "1MiB" "1GiB" "1TiB"    binary: 1024, 1024**2, ...
    "64KB" "1MB" "1GB" "1TB"        decimal: 1000, 1000**2, ...

Units are case-insensitive (`64kib`, `10S`). A bare `k`, `M`, `Gi`, ... is refused as
ambiguous, with both spellings it could mean. Fractions are fine when they land on a whole
number of bytes (`1.5KiB` is 1536; `0.1KiB` is refused). Negative values, NaN and infinity
are refused. Bad text raises ValueError with an example of the accepted form; a value of a
wrong Python type (None, a list, a bool) raises TypeError.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["DURATION_UNITS", "SIZE_UNITS", "parse_duration", "parse_size"]

DURATION_UNITS: dict[str, int] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
"""Milliseconds per unit (exact integers, so `1.5m` is exactly 90 seconds)."""

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
"""Bytes per unit, keyed by the lower-cased unit."""

_AMBIGUOUS_SIZE = {
    "k": "K",
    "m": "M",
    "g": "G",
    "t": "T",
    "ki": "K",
    "mi": "M",
    "gi": "G",
    "ti": "T",
}

_NUMBER = r"(?:[0-9]+(?:_[0-9]+)*(?:\.[0-9]+)?|\.[0-9]+)"
_SIZE_RE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)", re.ASCII)
_DURATION_PLAIN_RE = re.compile(_NUMBER, re.ASCII)
_DURATION_PART_RE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]+)", re.ASCII)

_DURATION_HELP = "use seconds (10, 2.5) or a number with a unit: 250ms, 10s, 1.5m, 2h, 1d"
_SIZE_HELP = (
    "use bytes (65536) or a number with a unit: 64KiB, 1MiB, 1GiB (binary) "
    "or 64KB, 1MB, 1GB (decimal)"
)


def _number(text: str) -> Fraction:
    try:
        return Fraction(text.replace("_", ""))
    except ValueError:  # past sys.get_int_max_str_digits()
        raise ValueError(f"the number {text[:20]}... has too many digits") from None


def _check_number(value: int | float, what: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{what}s cannot be negative, got {value!r}")


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number of seconds or a string such as `250ms`, `10s`, `1.5m`, `2h`, `1d`."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"a duration is a number or a string, not {type(value).__name__}")
    if not isinstance(value, str):
        _check_number(value, "duration")
        return float(value)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"durations cannot be negative, got {value!r}")
    if _DURATION_PLAIN_RE.fullmatch(text):
        millis = _number(text) * 1000
    else:
        if not text:
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
        millis = Fraction(0)
        position = 0
        while position < len(text):
            match = _DURATION_PART_RE.match(text, position)
            if match is None:
                raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
            unit = match.group(2).lower()
            if unit not in DURATION_UNITS:
                raise ValueError(
                    f"invalid duration {value!r}: unknown unit {match.group(2)!r}; {_DURATION_HELP}"
                )
            millis += _number(match.group(1)) * DURATION_UNITS[unit]
            position = match.end()
    try:
        seconds = float(millis / 1000)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too large") from None
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} is too large")
    return seconds


def parse_size(value: str | int | float) -> int:
    """Bytes from a number of bytes or a string such as `64KiB`, `1MiB`, `1GiB`, `64KB`, `1MB`."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"a size is a number or a string, not {type(value).__name__}")
    if not isinstance(value, str):
        _check_number(value, "size")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"a size is a whole number of bytes, got {value!r}")
        return int(value)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"sizes cannot be negative, got {value!r}")
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HELP}")
    number, unit = match.group(1), match.group(2)
    key = unit.lower()
    if key in _AMBIGUOUS_SIZE:
        prefix = _AMBIGUOUS_SIZE[key]
        binary = _number(number) * SIZE_UNITS[f"{prefix.lower()}ib"]
        decimal = _number(number) * SIZE_UNITS[f"{prefix.lower()}b"]
        hint = f"did you mean {number}{prefix}iB ({_show_bytes(binary)})"
        raise ValueError(
            f"ambiguous size unit {unit!r} in {value!r}: {hint} "
            f"or {number}{prefix}B ({_show_bytes(decimal)})?"
        )
    if key and key not in SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: unknown unit {unit!r}; {_SIZE_HELP}")
    size = _number(number) * SIZE_UNITS[key or "b"]
    if size.denominator != 1:
        raise ValueError(f"size {value!r} is not a whole number of bytes ({float(size)})")
    return size.numerator


def _show_bytes(amount: Fraction) -> str:
    if amount.denominator == 1:
        return f"{amount.numerator} bytes"
    return f"{float(amount)} bytes, not a whole number"
