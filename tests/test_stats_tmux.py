"""`rtserve stats`, the live dashboard, in a real terminal: a detached tmux pane of a fixed size
on a private tmux server, watching `rtserve run` of a scaffolded chat project that clients of
the independent `websockets` package use.

The dashboard test reads the pane as text. The screenshot test also captures it with its escape
sequences, turns them into HTML with rich and shoots that in headless Chromium; the PNG goes to
the test's temporary folder, and to docs/images/stats-dashboard.png only when
RTSERVE_UPDATE_SCREENSHOTS=1 (so a test run leaves the checkout as it was).
"""

from __future__ import annotations

import contextlib
import html
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rtserve.cli.main import main
from tests.conftest import require_tool
from tests.support.live_project import LiveProject
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "stats-dashboard.png"
WIDTH, HEIGHT = 160, 60  # the pane: the whole dashboard fits
# Seconds for any one thing to show up: `rtserve stats` starting (rich, a first poll and a second
# for the rates) on a machine busy with other tests can take 10 s and more.
TIMEOUT = 30.0
# Who connects (the chat's on_connect wants a name) and the room each one joins.
USERS = (("ada", "chat:lobby"), ("bob", "chat:lobby"), ("eve", "chat:python"))
PUBLISHED = 3  # messages ada publishes to chat:lobby: 2 subscribers get each


# --- the server: `rtserve run` of a scaffolded chat, and its clients ------------------------


class Peer:
    """One channel connection (/rt/ws) on the `websockets` package's sync client."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, op: str, **fields: Any) -> Any:
        """Send a command and return its result (pushes before the reply are skipped)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "op": op, **fields}))
        while True:
            message = json.loads(self.ws.recv(timeout=5))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]


@contextlib.contextmanager
def chat_server(
    tmp: Path, users: Sequence[tuple[str, str]]
) -> Iterator[tuple[LiveProject, list[Peer]]]:
    """A chat project (`rtserve new chat`) served by `rtserve run`, and one connected,
    subscribed Peer per (name, channel) of `users`."""
    from websockets.sync.client import connect

    project = tmp / "chat"
    created = CliRunner().invoke(main, ["new", "chat", str(project)])
    assert created.exit_code == 0, created.output
    server = LiveProject(project)
    try:
        with contextlib.ExitStack() as stack:
            peers = []
            for name, channel in users:
                ws = stack.enter_context(
                    # Unread pushes pile up client-side (no limit), never stalling a close.
                    connect(
                        f"ws://127.0.0.1:{server.port}/rt/ws",
                        open_timeout=5,
                        close_timeout=2,
                        max_queue=None,
                    )
                )
                peer = Peer(ws)
                peer.call("connect", data={"name": name})
                peer.call("subscribe", channel=channel)
                peers.append(peer)
            yield server, peers
    finally:
        server.stop()


# --- tmux -----------------------------------------------------------------------------------


class Tmux:
    """A tmux server of its own (`tmux -L <unique name>`), without a status line. A session's
    command runs under `sh`, which notes its exit status in a file (tmux's own
    `pane_dead_status` lags behind now and then)."""

    def __init__(self, tmp: Path) -> None:
        self.tmux = require_tool("tmux")
        self.name = f"rtserve-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.conf = tmp / "tmux.conf"
        self.conf.write_text("set -g status off\nset -g remain-on-exit on\n")
        # The sessions' commands get this environment: our rtserve, colours for rich, and the
        # pane's own size (pytest-xdist's workers have COLUMNS=80 and LINES=24, which rich
        # would take over the pane's 160 x 60).
        outside = ("TMUX", "TMUX_PANE", "COLUMNS", "LINES")
        self.env = {k: v for k, v in os.environ.items() if k not in outside}
        self.env.update(PYTHONPATH=str(ROOT), TERM="xterm-256color", COLORTERM="truecolor")

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.name, "-f", str(self.conf), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def _status_file(self, session: str) -> Path:
        return self.tmp / f"{session}.status"

    def start(self, session: str, argv: Sequence[str]) -> None:
        script = '"$@"; echo "$?" > "$0.tmp" && mv "$0.tmp" "$0"'
        command = ["sh", "-c", script, str(self._status_file(session)), *argv]
        self("new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", str(HEIGHT), *command)

    def capture(self, session: str, escapes: bool = False) -> str:
        return self("capture-pane", "-p", *(["-e"] if escapes else []), "-t", session)

    def wait_for(self, session: str, check: Callable[[str], bool], what: str) -> str:
        """The pane's text once `check` accepts it."""
        screen = ""

        def ready() -> bool:
            nonlocal screen
            screen = self.capture(session)
            return check(screen)

        try:
            until(ready, TIMEOUT, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{screen}") from None
        return screen

    def exit_status(self, session: str) -> int | None:
        """The exit status of the session's command; None while it runs."""
        try:
            return int(self._status_file(session).read_text())
        except FileNotFoundError:
            return None

    def wait_exit(self, session: str) -> int:
        """The exit status of the session's command, once it has exited."""
        try:
            until(lambda: self._status_file(session).exists(), TIMEOUT, "the command to exit")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{self.capture(session)}") from None
        status = self.exit_status(session)
        assert status is not None
        return status

    def kill(self) -> None:
        subprocess.run(
            [self.tmux, "-L", self.name, "kill-server"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def stats_argv(project: Path) -> list[str]:
    return [sys.executable, "-m", "rtserve.cli.main", "stats", str(project)]


def flat(screen: str) -> str:
    """The pane's text with every run of whitespace as one space (a title may wrap)."""
    return " ".join(screen.split())


def whole_frame(ansi: str) -> str | None:
    """A capture with its escapes, unless it caught the dashboard halfway through a redraw."""
    text = re.sub(r"\x1b\[[0-9;:]*[A-Za-z]", "", ansi)
    return ansi if "chat:lobby" in text and has_rates(text) and "q: quit" in text else None


def has_rates(screen: str) -> bool:
    """The second poll is in: the rate column shows figures."""
    return re.search(r"│ deliveries\s+│\s+\d+ │\s+[\d.]+/s │", screen) is not None


# --- the tests ------------------------------------------------------------------------------


def test_dashboard_in_tmux(tmp_path: Path, tmux: Tmux) -> None:
    with chat_server(tmp_path, USERS) as (server, peers):
        for i in range(PUBLISHED):
            peers[0].call("publish", channel="chat:lobby", data={"text": f"hello {i}"})
        tmux.start("stats", stats_argv(server.project))
        screen = tmux.wait_for(
            "stats",
            lambda s: "channel 3" in s and "chat:python" in s and has_rates(s),
            "the dashboard with 3 channel connections, chat:python and rates",
        )
        assert f"rtserve unix:{server.socket}" in flat(screen)
        assert "open: http 0, websocket 0, channel 3, total 3, sse 0, poll 0" in screen
        assert "top channels (2 channels, 3 subscribers, 3 users)" in screen  # on one line
        assert re.search(r"│ chat:lobby\s+│\s+2 │", screen), screen
        assert re.search(r"│ chat:python\s+│\s+1 │", screen), screen
        assert re.search(rf"│ published\s+│\s+{PUBLISHED} │", screen), screen
        assert re.search(rf"│ deliveries\s+│\s+{2 * PUBLISHED} │", screen), screen
        assert re.search(r"│ connections\s+│\s+3 │", screen), screen
        assert re.search(r"connections\b.{0,12} by queued bytes", flat(screen)), screen
        for name, channel in USERS:
            assert re.search(
                rf"│ channel\s+│ 127\.0\.0\.1:\d+ │ {name}\s+│.*│ {channel}\s+│", screen
            )
        assert "q: quit" in screen
        assert tmux.exit_status("stats") is None

        tmux("send-keys", "-t", "stats", "s")  # sort the connections by age
        tmux.wait_for(
            "stats",
            lambda s: re.search(r"connections\b.{0,12} by age", flat(s)) is not None,
            "the connections sorted by age",
        )

        tmux("send-keys", "-t", "stats", "f")  # only the channel connections: all three
        screen = tmux.wait_for("stats", lambda s: "channel only" in flat(s), "the filter")
        assert all(f" {name} " in screen for name, _ in USERS), screen
        tmux("send-keys", "-t", "stats", "f")  # only plain WebSockets: none here
        screen = tmux.wait_for("stats", lambda s: "websocket only" in flat(s), "the filter")
        assert not any(f" {name} " in screen for name, _ in USERS), screen
        listing = screen[screen.index("websocket only") :]
        assert re.search(r"│ none\s+│", listing), screen  # not an empty table

        tmux("send-keys", "-t", "stats", "q")
        assert tmux.wait_exit("stats") == 0


# Who the screenshot shows: a busier chat, with messages flowing while it is taken.
SHOT_USERS = (
    *((name, "chat:lobby") for name in ("ada", "bob", "eve", "kim", "lin", "max", "noa")),
    *((name, "chat:python") for name in ("guido", "tim", "raymond", "brett")),
    *((name, "chat:rust") for name in ("ferris", "niko")),
    ("sam", "chat:help"),
)
# rich's `code_format`: {code}, {background} and {foreground} are filled in by rich.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
body {{ margin: 0; padding: 16px; background: #fff; }}
.window {{ display: inline-block; border-radius: 8px; overflow: hidden;
  box-shadow: 0 2px 12px rgba(0, 0, 0, .35); background: {background}; }}
.bar {{ padding: 6px 12px; background: #3a3a3a; color: #ccc;
  font: 13px "DejaVu Sans", sans-serif; }}
pre {{ margin: 0; padding: 12px 16px; color: {foreground}; background: {background};
  font: 15px/normal "DejaVu Sans Mono", "Liberation Mono", monospace; }}
</style></head><body><div class="window"><div class="bar">@TITLE@</div>
<pre><code>{code}</code></pre></div></body></html>
"""


def ansi_to_html(ansi: str, title: str) -> str:
    """A terminal capture (with SGR escapes) as a self-contained HTML page."""
    from rich.console import Console
    from rich.terminal_theme import MONOKAI
    from rich.text import Text

    console = Console(
        record=True,
        width=WIDTH,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
    )
    lines = ansi.rstrip().splitlines()
    console.print(Text.from_ansi("\n".join(lines)), no_wrap=True, crop=False)
    template = PAGE.replace("@TITLE@", html.escape(title))
    out = console.export_html(theme=MONOKAI, inline_styles=True, code_format=template)
    # The terminal's default background is the page's: no box per span over the line above.
    return out.replace(f"; background-color: {MONOKAI.background_color.hex}", "")


def test_dashboard_screenshot(tmp_path: Path, tmux: Tmux, page: Any) -> None:
    with chat_server(tmp_path, SHOT_USERS) as (server, peers):
        lobby = [
            p for p, (_, channel) in zip(peers, SHOT_USERS, strict=True) if channel == "chat:lobby"
        ]
        stop = threading.Event()

        def chatter() -> None:  # under the chat's publish rate (2/s per connection)
            for i in range(1000):
                if stop.wait(0.25):
                    return
                lobby[i % len(lobby)].call(
                    "publish", channel="chat:lobby", data={"text": f"hi {i}"}
                )
                index = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                try:  # and the chat's page: HTTP requests, and their latency
                    index.request("GET", "/")
                    index.getresponse().read()
                finally:
                    index.close()

        talker = threading.Thread(target=chatter, daemon=True)
        talker.start()
        try:
            tmux.start("stats", stats_argv(server.project))
            tmux.wait_for(
                "stats",
                lambda s: f"channel {len(SHOT_USERS)}" in s and has_rates(s),
                "the dashboard with every connection and rates",
            )
            time.sleep(1.2)  # one more tick: rates over a whole interval
            ansi = until(
                lambda: whole_frame(tmux.capture("stats", escapes=True)), TIMEOUT, "a frame"
            )
        finally:
            stop.set()
            talker.join(5)
        tmux("send-keys", "-t", "stats", "q")

    assert "\x1b[" in ansi  # styled: bold, colours
    page_html = ansi_to_html(ansi, "rtserve stats")
    (tmp_path / "stats-dashboard.html").write_text(page_html)
    assert "chat:lobby" in page_html and "deliveries" in page_html
    page.set_content(page_html)
    shot = tmp_path / "stats-dashboard.png"
    page.locator(".window").screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("RTSERVE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
