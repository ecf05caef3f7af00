"""rtserve.js with delta publications in headless Chromium: a page with two clients of one
channel, one asking for deltas, renders the same dashboard state either way (WebSocket and
SSE), and a delta that fails its checksum makes the subscription again without losing a tick.
The codec alone is checked against Python's encoder with node, when node is installed."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtserve import App
from rtserve.protocol.fossil import create_delta
from rtserve.testing import ThreadedServer

with contextlib.suppress(ImportError):  # if missing, the `browser` fixture skips (fails in CI)
    from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parent.parent
PAGE = Path(__file__).parent / "browser_pages" / "delta.html"
RTSERVE_JS = ROOT / "rtserve" / "static" / "rtserve.js"
TIMEOUT_MS = 10_000
# Counts the WebSocket messages that are delta pushes, as they arrive.
COUNT_DELTAS = """
window.deltaPushes = 0;
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      if (String(event.data).includes('"delta":true')) window.deltaPushes += 1;
    });
  }
};
"""


def state(tick: int) -> dict[str, Any]:
    """A dashboard of 60 values, two of which change each tick."""
    values: dict[str, Any] = {f"m{i:02}": {"v": i, "unit": "ms", "ok": True} for i in range(60)}
    for i in (tick % 60, (tick * 7) % 60):
        values[f"m{i:02}"]["v"] = tick * 1000 + i
    values["title"] = "Zoë's dashboard"  # non-ASCII: travels escaped in the text
    return values


def rendered(data: dict[str, Any]) -> str:
    """As the page renders a state: sorted `key=value` lines, values as JSON.stringify."""
    lines = [f"{key}={json.dumps(data[key], separators=(',', ':'), ensure_ascii=False)}"
             for key in sorted(data)]  # fmt: skip
    return "\n".join(lines)


@pytest.fixture(scope="module")
def app() -> App:
    app = App()
    app.static_file("/", PAGE)
    app.channel("dash:*", history=100, delta="fossil")
    return app


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, access_log=False) as srv:
        yield srv


def open_page(page: Page, server: ThreadedServer, channel: str, transport: str) -> None:
    page.add_init_script(COUNT_DELTAS)
    page.goto(f"{server.url}/?channel={channel}&transports={transport}")
    page.wait_for_function("subscribes > 0 && plain.state === 'connected'", timeout=TIMEOUT_MS)


def publish_and_wait(page: Page, app: App, channel: str, ticks: range) -> None:
    for tick in ticks:
        app.publish_threadsafe(channel, state(tick)).result(10)
    last = ticks[-1]
    expect(page.locator("#delta-offset")).to_have_text(str(last), timeout=TIMEOUT_MS)
    expect(page.locator("#plain-offset")).to_have_text(str(last), timeout=TIMEOUT_MS)
    text = rendered(state(last))
    assert page.locator("#delta-state").text_content() == text
    assert page.locator("#plain-state").text_content() == text


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_page_renders_the_same_state_with_and_without_deltas(
    page: Page, server: ThreadedServer, app: App, transport: str
) -> None:
    channel = f"dash:{transport}"
    open_page(page, server, channel, transport)
    publish_and_wait(page, app, channel, range(1, 11))
    assert page.evaluate("deltaSub.textOffset") == 10  # the text pushes were read
    if transport == "websocket":
        assert page.evaluate("deltaPushes") == 9  # every tick after the first a delta


def test_a_delta_that_fails_its_checksum_makes_the_subscription_again(
    page: Page, server: ThreadedServer, app: App
) -> None:
    channel = "dash:broken"
    open_page(page, server, channel, "websocket")
    publish_and_wait(page, app, channel, range(1, 4))
    page.evaluate("deltaSub.text = deltaSub.text.replace('ms', 'us')")  # not the server's
    publish_and_wait(page, app, channel, range(4, 8))
    assert page.evaluate("subscribes") == 2  # made again once, and recovered from history
    assert page.evaluate("deltaSub.position.offset") == 7


def test_apply_delta_agrees_with_the_python_encoder() -> None:
    """Rtserve.applyDelta under node, fed deltas of random edits made by create_delta."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    rng = random.Random(24)
    cases = []
    for _ in range(200):
        source = "".join(rng.choice('ab{}":,0123456789 xyz') for _ in range(rng.randrange(300)))
        target = source
        for _ in range(rng.randrange(6)):
            at = rng.randrange(len(target) + 1)
            cut = rng.randrange(20)
            new = "".join(rng.choice("abcXYZ~_;@:,\n") for _ in range(rng.randrange(20)))
            target = target[:at] + new + target[at + cut :]
        delta = create_delta(source.encode(), target.encode()).decode()
        cases.append([source, delta, target])
    script = f"""
        const Rtserve = require({json.dumps(str(RTSERVE_JS))});
        const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
        let wrong = 0;
        for (const [source, delta, target] of cases) {{
          if (Rtserve.applyDelta(source, delta) !== target) wrong += 1;
          const broken = delta.slice(0, -2) + (delta.at(-2) === "0" ? "1" : "0") + ";";
          try {{ Rtserve.applyDelta(source, broken); wrong += 1; }} catch (error) {{}}
        }}
        console.log(JSON.stringify({{ cases: cases.length, wrong }}));
    """
    done = subprocess.run(
        [node, "-e", script], input=json.dumps(cases), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"cases": 200, "wrong": 0}
