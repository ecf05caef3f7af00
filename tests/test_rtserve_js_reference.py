"""docs/rtserve-js.md documents what rtserve/static/rtserve.js has: every constructor option
(with its default), every public method of the client and of a subscription, every handler,
state, transport and final close code. The names are read from the source with regular
expressions, so a new option or method that the reference does not mention fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "rtserve" / "static" / "rtserve.js").read_text()
REFERENCE = (ROOT / "docs" / "rtserve-js.md").read_text()


def class_body(name: str) -> str:
    """The source of `class name { ... }`, up to the next line that closes a class."""
    start = SOURCE.index(f"  class {name} ")
    return SOURCE[start : SOURCE.index("\n  }\n", start)]


def constructor_options() -> dict[str, str | None]:
    """Option name -> its default as written after `||` in the constructor (or None)."""
    body = class_body("Rtserve")
    constructor = body[body.index("constructor(") : body.index("\n    }\n")]
    options: dict[str, str | None] = {}
    for match in re.finditer(r"options\.(\w+)(?:\s*\|\|\s*(\[[^\]]*\]|[^)\s;]+))?", constructor):
        options.setdefault(match[1], match[2])
    return options


def public_methods(name: str) -> list[str]:
    """Methods (and getters) of a class, without the constructor and `_private` ones."""
    found = re.findall(r"^    (?:get )?([A-Za-z]\w*)\(", class_body(name), re.M)
    return [method for method in found if method != "constructor"]


def option_row(name: str) -> str:
    rows = [line for line in REFERENCE.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"no row for option {name!r} in the table of docs/rtserve-js.md"
    return rows[0]


def test_the_source_is_read() -> None:
    assert {"url", "prefix", "token", "getToken", "transports"} <= set(constructor_options())
    assert {"subscribe", "publish", "close"} <= set(public_methods("Rtserve"))
    assert {"position", "unsubscribe"} <= set(public_methods("Subscription"))


def test_every_constructor_option_is_documented_with_its_default() -> None:
    for name, default in constructor_options().items():
        row = option_row(name)
        if default is not None and default not in ("global.location.origin",):
            shown = default.strip('"')
            assert shown in row, f"option {name}: default {default} not in: {row}"


def test_every_public_method_is_documented() -> None:
    for method in public_methods("Rtserve"):
        assert f"### rt.{method}(" in REFERENCE, f"no section for rt.{method}()"
    for member in public_methods("Subscription"):
        assert f"| `{member}" in REFERENCE, f"Subscription.{member} is not in the table"


def test_handlers_states_transports_and_codes_are_documented() -> None:
    handlers = set(re.findall(r'_call\("(\w+)"', SOURCE))
    handlers |= set(re.findall(r"handlers\.(\w+)", SOURCE))
    assert {"onPublication", "onError", "since", "token"} <= handlers
    for name in handlers:
        assert f"| `{name}" in REFERENCE, f"handler member {name!r} is not in the table"
    states = set(re.findall(r'_state\("(\w+)"', SOURCE))
    assert states == {"connecting", "connected", "disconnected", "closed"}
    for state in states:
        assert f"| `{state}` |" in REFERENCE, f"state {state!r} is not in the table"
    events = set(re.findall(r"this\.listeners\.(\w+)", SOURCE))
    for event in events:
        assert f'rt.on("{event}"' in REFERENCE, f"event {event!r} is not documented"
    transports = re.search(r"const TRANSPORTS = \{(.*?)\};", SOURCE, re.S)
    assert transports is not None
    for name in re.findall(r"^\s*(\w+):", transports[1], re.M):
        assert f"`{name}`" in REFERENCE, f"transport {name!r} is not documented"
    final = re.search(r"const FINAL = new Set\(\[([\d, ]+)\]\)", SOURCE)
    assert final is not None
    for code in [*final[1].replace(" ", "").split(","), "4002"]:
        assert f"| {code} |" in REFERENCE, f"final close code {code} is not in the table"


def test_timings_in_the_source_are_those_documented() -> None:
    ping = re.search(r"const PING_EVERY = (\d+);", SOURCE)
    poll = re.search(r"const POLL_TIMEOUT = (\d+);", SOURCE)
    assert ping is not None and poll is not None
    assert f"every {int(ping[1]) // 1000} s" in REFERENCE
    assert f"up to {poll[1]} s" in REFERENCE
