"""What `rtserve run`'s supervisor tells the user: where it listens, what it watches."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from rtserve import __version__

WAITING = "(the project does not start: every request gets a 503 with the error)"


def url_lines(urls: Sequence[str], state: str) -> list[str]:
    """One line per URL: "rtserve serving URL" (or "waiting", with what that means)."""
    note = f" {WAITING}" if state == "waiting" else ""
    return [f"rtserve {state} {url}{note}" for url in urls]


def show_banner(urls: Sequence[str], state: str, reload: str, workers: str | None) -> None:
    """The first announcement: URLs, the reload line and the workers line (None: one
    worker), in a panel on a terminal and as plain lines otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.panel import Panel
        from rich.text import Text

        text = Text()
        for url in urls:
            text.append(url, style="bold cyan")
            if state == "waiting":
                text.append(f" {WAITING}", style="yellow")
            text.append("\n")
        text.append(reload, style="dim")
        if workers is not None:
            text.append("\n" + workers, style="dim")
        Console().print(Panel(text, title=f"rtserve {__version__}", expand=False))
    else:
        for line in url_lines(urls, state):
            click.echo(line)
        click.echo(reload)
        if workers is not None:
            click.echo(workers)
