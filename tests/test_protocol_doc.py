"""docs/protocol.md's tables against the code: the HTTP status of every error code, and the
codes each table lists. The tables are parsed, so neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path

from rtserve.realtime.access import http_error
from rtserve.realtime.protocol import ChannelError, DisconnectCode, ErrorCode

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
APP_CODES = (1000, 1003, 4242)  # an app's own refusals


def table_after(marker: str) -> list[list[str]]:
    """The cells of the rows of the first Markdown table after the line `marker` starts."""
    lines = PROTOCOL.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rows: list[list[str]] = []
    for line in (line.strip() for line in lines[start + 1 :]):
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # past the head and the |---| line


def test_the_http_status_of_every_error_code_is_the_documented_one() -> None:
    documented: dict[int, int] = {}
    app_status = None
    for status, codes in table_after("- **HTTP status of each code**"):
        numbers = [int(n) for n in re.findall(r"\b\d{3}\b", codes)]
        assert numbers or "app" in codes, codes
        for code in numbers:
            assert code not in documented, f"{code} is in the table twice"
            documented[code] = int(status)
        if "app" in codes:
            app_status = int(status)
    assert set(documented) == {int(code) for code in ErrorCode}
    assert app_status is not None, "the table says nothing of the app's codes"
    expected = [*documented.items(), *((c, app_status) for c in APP_CODES)]
    for code, want in expected:
        answer = http_error(ChannelError(code))  # what every HTTP endpoint answers with
        assert answer.status == want, (code, answer.status, want)


def test_the_error_and_close_code_tables_list_every_code() -> None:
    errors = {int(row[0]) for row in table_after("## Error codes")}
    assert errors == {int(code) for code in ErrorCode}
    closes = set()
    for row in table_after("## Close codes"):
        closes |= {int(n) for n in re.findall(r"\d{4}", row[0])}
    assert {int(code) for code in DisconnectCode} | {1012} <= closes
