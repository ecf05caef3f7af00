"""Tests for rtserve.app.conditional: HTTP dates, ETags, conditional requests and ranges."""

from __future__ import annotations

import calendar
import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.app.conditional import (
    RangeNotSatisfiable,
    etag_matches,
    format_http_date,
    if_range_allows,
    is_not_modified,
    make_etag,
    parse_http_date,
    parse_range,
)
from rtserve.errors import HTTPError

FUZZ = settings(max_examples=200, deadline=None)
EXAMPLE_TS = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
EXAMPLE_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
NOW_2025 = calendar.timegm((2025, 6, 1, 0, 0, 0))
TIMESTAMPS = st.integers(
    calendar.timegm((1, 1, 1, 0, 0, 0)), calendar.timegm((9999, 12, 31, 23, 59, 59))
)


# --- dates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (EXAMPLE_TS, EXAMPLE_DATE),
        (EXAMPLE_TS + 0.999, EXAMPLE_DATE),
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (951782400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (253402300799, "Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
)
def test_format_http_date(ts: float, expected: str) -> None:
    assert format_http_date(ts) == expected


@pytest.mark.parametrize(
    "value",
    [
        EXAMPLE_DATE,
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun Nov 06 08:49:37 1994",
        f"  {EXAMPLE_DATE}\t",
        "Mon, 06 Nov 1994 08:49:37 GMT",  # a wrong weekday is tolerated
    ],
)
def test_parse_http_date_forms(value: str) -> None:
    assert parse_http_date(value, now=NOW_2025) == EXAMPLE_TS


@pytest.mark.parametrize(
    ("short_year", "now_year", "expected_year"),
    [
        ("94", 2025, 1994),
        ("25", 2025, 2025),
        ("75", 2025, 2075),
        ("76", 2025, 1976),
        ("00", 2025, 2000),
        ("99", 2070, 2099),
        ("21", 2070, 2021),
        ("20", 2070, 2120),
        ("10", 2090, 2110),
        ("41", 2090, 2041),
    ],
)
def test_parse_rfc850_two_digit_year(short_year: str, now_year: int, expected_year: int) -> None:
    now = calendar.timegm((now_year, 6, 1, 0, 0, 0))
    parsed = parse_http_date(f"Monday, 01-Jan-{short_year} 00:00:00 GMT", now=now)
    assert parsed == calendar.timegm((expected_year, 1, 1, 0, 0, 0))


def test_parse_http_date_leap_second() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == calendar.timegm(
        (2017, 1, 1, 0, 0, 0)
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "sun, 06 nov 1994 08:49:37 gmt",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Xyz 1994 08:49:37 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 GMT",
        "1994-11-06T08:49:37Z",
        "784111777",
        EXAMPLE_DATE + " " * 40 + "x",
        "x" * 10_000,
    ],
)
def test_parse_http_date_rejects(value: str) -> None:
    assert parse_http_date(value) is None


@FUZZ
@given(TIMESTAMPS)
def test_http_date_round_trip(ts: int) -> None:
    text = format_http_date(ts)
    assert parse_http_date(text) == ts
    if ts >= 0:  # the email module reads years below 100 as two-digit years
        assert email.utils.parsedate_to_datetime(text).timestamp() == ts


@FUZZ
@given(TIMESTAMPS)
def test_asctime_round_trip(ts: int) -> None:
    text = format_http_date(ts)
    weekday, day, month, year, clock, _ = text.replace(",", "").split(" ")
    asctime = f"{weekday} {month} {int(day):>2} {clock} {year}"
    assert parse_http_date(asctime) == ts


@FUZZ
@given(st.text(max_size=60))
def test_parse_http_date_never_raises(value: str) -> None:
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)


# --- ETags ------------------------------------------------------------------------------------


def test_make_etag() -> None:
    assert make_etag(255, 1_700_000_000_123_456_789) == '"17979cfe3d85cd15-ff"'
    assert make_etag(0, 0) == '"0-0"'
    assert make_etag(1, 2) != make_etag(2, 1)


ETAG = '"abc-1"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('"abc-1"', True),
        ('W/"abc-1"', True),
        ("*", True),
        (" * ", True),
        ('"x", "abc-1"', True),
        ('"x",W/"abc-1" , "y"', True),
        ('"a,b", "abc-1"', True),
        ('"x", "y"', False),
        ('"abc-2"', False),
        ("abc-1", False),
        ('"abc-1', False),
        ("", False),
        (",,, ,", False),
        ('garbage, "abc-1"', True),
        ('W/garbage, W/"abc-1"', True),
    ],
)
def test_etag_matches(header: str, expected: bool) -> None:
    assert etag_matches(header, ETAG) is expected


def test_etag_matches_weak_own_etag() -> None:
    assert etag_matches('"abc-1"', 'W/"abc-1"')
    assert etag_matches('W/"abc-1"', 'W/"abc-1"')


@FUZZ
@given(st.text(max_size=80))
def test_etag_matches_never_raises(header: str) -> None:
    etag_matches(header, ETAG)


# --- is_not_modified ----------------------------------------------------------------------------

MTIME = EXAMPLE_TS + 0.5


@pytest.mark.parametrize(
    ("if_none_match", "if_modified_since", "expected"),
    [
        (None, None, False),
        (ETAG, None, True),
        ('W/"abc-1"', None, True),
        ('"other"', None, False),
        ("*", None, True),
        (None, EXAMPLE_DATE, True),
        (None, "Sun, 06 Nov 1994 08:49:38 GMT", True),
        (None, "Sun, 06 Nov 1994 08:49:36 GMT", False),
        (None, "Sunday, 06-Nov-94 08:49:37 GMT", True),
        (None, "not a date", False),
        # If-None-Match takes precedence over If-Modified-Since (RFC 9110 13.2.2).
        ('"other"', EXAMPLE_DATE, False),
        (ETAG, "Sun, 06 Nov 1994 08:49:36 GMT", True),
        # A blank If-None-Match counts as absent.
        ("", EXAMPLE_DATE, True),
        ("  ", "Sun, 06 Nov 1994 08:49:36 GMT", False),
    ],
)
def test_is_not_modified(
    if_none_match: str | None, if_modified_since: str | None, expected: bool
) -> None:
    result = is_not_modified(
        etag=ETAG,
        mtime=MTIME,
        if_none_match=if_none_match,
        if_modified_since=if_modified_since,
    )
    assert result is expected


@FUZZ
@given(TIMESTAMPS, st.floats(0, 0.999))
def test_last_modified_round_trip_is_not_modified(ts: int, fraction: float) -> None:
    mtime = ts + fraction
    since = format_http_date(mtime)
    assert is_not_modified(etag=ETAG, mtime=mtime, if_none_match=None, if_modified_since=since)
    assert not is_not_modified(
        etag=ETAG, mtime=mtime + 1, if_none_match=None, if_modified_since=since
    )


# --- parse_range ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 1000, None),
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=0-0", 1000, (0, 0)),
        ("bytes=100-", 1000, (100, 999)),
        ("bytes=999-", 1000, (999, 999)),
        ("bytes=-500", 1000, (500, 999)),
        ("bytes=-1000", 1000, (0, 999)),
        ("bytes=-5000", 1000, (0, 999)),
        ("bytes=500-5000", 1000, (500, 999)),
        ("bytes=0-999", 1000, (0, 999)),
        ("Bytes=1-2", 1000, (1, 2)),
        ("  bytes=1-2  ", 1000, (1, 2)),
        ("bytes= 1-2 ", 1000, (1, 2)),
        ("bytes=1-2,", 1000, (1, 2)),
        ("bytes=, 1-2", 1000, (1, 2)),
        ("bytes=0-" + "9" * 30, 1000, (0, 999)),
        ("bytes=007-010", 1000, (7, 10)),
        # Ignored: not a bytes range, malformed, or several ranges.
        ("", 1000, None),
        ("bytes", 1000, None),
        ("bytes=", 1000, None),
        ("bytes=,", 1000, None),
        ("items=0-1", 1000, None),
        ("bytes =0-1", 1000, None),
        ("bytes=1", 1000, None),
        ("bytes=-", 1000, None),
        ("bytes=a-b", 1000, None),
        ("bytes=1-a", 1000, None),
        ("bytes=5-4", 1000, None),
        ("bytes=-1-2", 1000, None),
        ("bytes=1--2", 1000, None),
        ("bytes=+1-2", 1000, None),
        ("bytes=1 -2", 1000, None),
        ("bytes=0x10-20", 1000, None),
        ("bytes=\u0661-\u0662", 1000, None),  # Arabic-Indic digits
        ("bytes=0-1,5-6", 1000, None),
        ("bytes=0-1,2000-3000", 1000, None),
        ("bytes=0-" + "9" * 5000, 1000, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=5000-", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-5", 0),
    ],
)
def test_parse_range_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    error = info.value
    assert isinstance(error, HTTPError)
    assert error.status == 416
    assert error.size == size
    assert error.headers == {"Content-Range": f"bytes */{size}"}


@FUZZ
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 10_000))
def test_parse_range_stays_inside_the_file(first: int, length: int, size: int) -> None:
    header = f"bytes={first}-{first + length}"
    if first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    start, end = parse_range(header, size) or (-1, -1)
    assert (start, end) == (first, min(first + length, size - 1))


@FUZZ
@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_parse_suffix_range(suffix: int, size: int) -> None:
    start, end = parse_range(f"bytes=-{suffix}", size) or (-1, -1)
    assert end == size - 1
    assert end - start + 1 == min(suffix, size)


@FUZZ
@given(st.text(alphabet="bytes=-,0123456789 \t", max_size=30), st.integers(0, 100))
def test_parse_range_only_raises_range_not_satisfiable(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        start, end = result
        assert 0 <= start <= end < size


# --- if_range_allows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("if_range", "etag", "expected"),
    [
        (None, ETAG, True),
        (ETAG, ETAG, True),
        (f"  {ETAG} ", ETAG, True),
        ('"abc-2"', ETAG, False),
        ('W/"abc-1"', ETAG, False),
        (ETAG, 'W/"abc-1"', False),
        ('"abc-1", "x"', ETAG, False),
        ('"abc-1', ETAG, False),
        ('"', ETAG, False),
        (EXAMPLE_DATE, ETAG, True),
        ("Sunday, 06-Nov-94 08:49:37 GMT", ETAG, True),
        ("Sun, 06 Nov 1994 08:49:38 GMT", ETAG, False),
        ("Sun, 06 Nov 1994 08:49:36 GMT", ETAG, False),
        ("", ETAG, False),
        ("garbage", ETAG, False),
        ("*", ETAG, False),
    ],
)
def test_if_range_allows(if_range: str | None, etag: str, expected: bool) -> None:
    assert if_range_allows(if_range, etag, MTIME) is expected


def test_if_range_with_made_etag() -> None:
    etag = make_etag(1234, 1_700_000_000_000_000_000)
    assert if_range_allows(etag, etag, 1_700_000_000.0)
    assert not if_range_allows(make_etag(1235, 1_700_000_000_000_000_000), etag, 1.0)
