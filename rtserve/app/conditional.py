"""HTTP validators, conditional requests and byte ranges for serving files (RFC 9110).

Contract:
- Dates are IMF-fixdate on output; on input the three HTTP-date forms are accepted
  (case-sensitively, as RFC 9110 5.6.7 says) and garbage parses to None.
- ETags made here are strong: `"<hex mtime_ns>-<hex size>"`.
- Header parsers never raise on bad input: a malformed validator simply does not match and a
  malformed Range is ignored (None), which makes the caller serve the whole file. The one
  exception is a well-formed single range outside the file, which raises
  `RangeNotSatisfiable` (416 with `Content-Range: bytes */<size>`).
- Multiple ranges are ignored rather than answered with multipart/byteranges.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from rtserve.errors import HTTPError

__all__ = [
    "RangeNotSatisfiable",
    "etag_matches",
    "format_http_date",
    "if_range_allows",
    "is_not_modified",
    "make_etag",
    "parse_http_date",
    "parse_range",
]

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_DAY = "|".join(_WEEKDAYS)
_LONG_DAY = "|".join(_LONG_WEEKDAYS)
_MONTH = "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(rf"(?:{_LONG_DAY}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME_DATE = re.compile(rf"(?:{_DAY}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")
_MAX_DATE_LENGTH = 64


class RangeNotSatisfiable(HTTPError):
    """416 for a Range that selects no byte of a `size`-byte representation."""

    def __init__(self, size: int) -> None:
        super().__init__(416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        self.size = size


def format_http_date(ts: float) -> str:
    """Format a POSIX timestamp as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`."""
    t = time.gmtime(ts)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str, *, now: float | None = None) -> float | None:
    """Parse an IMF-fixdate, RFC 850 or asctime date into a timestamp; None if invalid.

    An RFC 850 two-digit year is read as the year with those digits in the 100 years ending
    50 years after `now` (default: the clock), as RFC 9110 5.6.7 asks.
    """
    text = value.strip(" \t")
    if len(text) > _MAX_DATE_LENGTH:
        return None
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
        return _timestamp(int(year), month, int(day), int(hour), int(minute), int(second))
    if match := _RFC850_DATE.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        current = time.gmtime(time.time() if now is None else now).tm_year
        year = current - current % 100 + int(short_year)
        if year > current + 50:
            year -= 100
        elif year <= current - 50:
            year += 100
        return _timestamp(year, month, int(day), int(hour), int(minute), int(second))
    if match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
        return _timestamp(int(year), month, int(day), int(hour), int(minute), int(second))
    return None


def _timestamp(
    year: int, month: str, day: int, hour: int, minute: int, second: int
) -> float | None:
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        when = datetime(
            year, _MONTHS.index(month) + 1, day, hour, minute, min(second, 59), tzinfo=UTC
        )
    except ValueError:
        return None
    # A leap second (:60) is read as the first second of the next minute.
    return when.timestamp() + (1 if second == 60 else 0)


def make_etag(size: int, mtime_ns: int) -> str:
    """Return a strong quoted ETag for a file, `"<hex mtime_ns>-<hex size>"`."""
    return f'"{mtime_ns:x}-{size:x}"'


def _opaque_tag(etag: str) -> str:
    """The opaque-tag of an entity-tag: without `W/` and without the quotes."""
    tag = etag.strip(" \t")
    tag = tag.removeprefix("W/")
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        return tag[1:-1]
    return tag


def _entity_tags(value: str) -> tuple[bool, list[str]]:
    """Scan an entity-tag list into (saw `*`, opaque-tags); malformed members are skipped."""
    star = False
    tags: list[str] = []
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char in " \t,":
            i += 1
            continue
        if char == "*":
            star = True
            i += 1
            continue
        if value.startswith("W/", i):
            i += 2
        if i < n and value[i] == '"':
            close = value.find('"', i + 1)
            if close < 0:
                break
            tags.append(value[i + 1 : close])
            i = close + 1
        else:
            comma = value.find(",", i)
            if comma < 0:
                break
            i = comma + 1
    return star, tags


def etag_matches(if_none_match: str, etag: str) -> bool:
    """True if the If-None-Match list holds `*` or a tag weakly equal to `etag`."""
    star, tags = _entity_tags(if_none_match)
    own = _opaque_tag(etag)
    return star or own in tags


def is_not_modified(
    *,
    etag: str,
    mtime: float,
    if_none_match: str | None,
    if_modified_since: str | None,
) -> bool:
    """True if a GET/HEAD may be answered 304 Not Modified (RFC 9110 13.1.2, 13.1.3, 13.2.2).

    If-None-Match decides when present (a blank value counts as absent); otherwise a valid
    If-Modified-Since date not older than `mtime`, compared in whole seconds, does.
    """
    if if_none_match is not None and if_none_match.strip(" \t"):
        return etag_matches(if_none_match, etag)
    if if_modified_since is None:
        return False
    since = parse_http_date(if_modified_since)
    # HTTP dates have one-second resolution, so a file modified during that second is
    # still unmodified.
    return since is not None and mtime < since + 1


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive (start, end) of a single byte range over `size` bytes.

    None when the header is absent, not a `bytes=` range, malformed or has several ranges;
    raises RangeNotSatisfiable when the one range selects no byte.
    """
    if header is None:
        return None
    unit, equals, range_set = header.strip(" \t").partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    specs = [spec for spec in (part.strip(" \t") for part in range_set.split(",")) if spec]
    if len(specs) != 1:
        return None
    first_text, dash, last_text = specs[0].partition("-")
    if not dash:
        return None
    if not first_text:
        suffix = _digits(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size <= 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    first = _digits(first_text)
    if first is None:
        return None
    last: int | None = None
    if last_text:
        last = _digits(last_text)
        if last is None or last < first:
            return None
    if first >= size:
        raise RangeNotSatisfiable(size)
    if last is None or last >= size:
        last = size - 1
    return first, last


def _digits(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than int() accepts
        return None


def if_range_allows(if_range: str | None, etag: str, mtime: float) -> bool:
    """True if a Range may be honoured given If-Range (RFC 9110 13.1.5); True when absent.

    An entity-tag must strongly match `etag`; a date must equal `mtime` to the second.
    Anything else, a blank or malformed value included, is False: send the whole file.
    """
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    if value.startswith(("W/", '"')):
        return (
            value.startswith('"')
            and len(value) >= 2
            and value.endswith('"')
            and '"' not in value[1:-1]
            and not etag.strip(" \t").startswith("W/")
            and value[1:-1] == _opaque_tag(etag)
        )
    date = parse_http_date(value)
    return date is not None and date <= mtime < date + 1
