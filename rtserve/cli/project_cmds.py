"""`rtserve check`, `rtserve routes` and `rtserve version`: looking at a project."""

from __future__ import annotations

import inspect
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import click

from rtserve import __version__
from rtserve.app.app import App
from rtserve.config.loader import ConfigErrors
from rtserve.errors import ConfigError, HTTPError
from rtserve.realtime.component import channel_rules


def load_project_app(path: str | None) -> App:
    """Load, validate and build the project at `path`; print every problem and exit 2."""
    from rtserve.config.project import build_app, find_config, load_project

    config_file = find_config(path)
    if not config_file.exists():
        click.echo(f"error: no {config_file.name} in {config_file.parent}", err=True)
        sys.exit(2)
    try:
        config, folder = load_project(config_file)
        app = build_app(config, folder)
        logging.getLogger("rtserve").setLevel(config.logging.level.upper())
        return app
    except ConfigErrors as exc:
        for issue in exc.issues:
            click.echo(f"error: {issue}", err=True)
        click.echo(f"{len(exc.issues)} problem(s) in {config_file}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.command(short_help="Validate a project: list every problem.")
@click.argument("path", required=False)
def check(path: str | None) -> None:
    """Validate the project at PATH (default: here): list every problem; exit 0 or 2."""
    from rtserve.app.websocket import settings_contradictions

    app = load_project_app(path)
    routes = {endpoint.pattern for _, endpoint in app.router.endpoints}
    websocket_routes = {
        endpoint.pattern: endpoint.websocket
        for _, endpoint in app.router.endpoints
        if endpoint.websocket is not None
    }
    for warning in settings_contradictions(app.settings.websocket, websocket_routes.items()):
        click.echo(f"warning: {warning}", err=True)
    rules = len(channel_rules(app))
    click.echo(f"ok: {len(routes)} route(s), {rules} channel rule(s)")


def _describe(handler: Any) -> str:
    """`module.name (file:line)` of a handler, as far as it can be found."""
    target = getattr(handler, "__wrapped__", handler)
    name = getattr(target, "__qualname__", None) or type(target).__name__
    module = getattr(target, "__module__", None) or ""
    where = ""
    if not module.startswith("rtserve."):  # the app's own code: say where it is
        try:
            source = inspect.getsourcefile(target) or ""
            line = inspect.getsourcelines(target)[1]
            where = f" ({_short(source)}:{line})"
        except (TypeError, OSError):
            pass
    return f"{module}.{name}{where}" if module else f"{name}{where}"


def _short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


UNBOUNDED_WIDTH = 100_000  # columns for `routes` when stdout is not a terminal


@click.command(short_help="List a project's routes and channel rules.")
@click.argument("path", required=False)
@click.option("--match", "url", help="Show which route a URL (path) hits, and where it is defined.")
@click.option("--method", default="GET", show_default=True, help="Method for --match.")
def routes(path: str | None, url: str | None, method: str) -> None:
    """List the routes and channel rules of the project at PATH (default: here)."""
    from rich.console import Console
    from rich.table import Table

    app = load_project_app(path)
    # A terminal's width, else none: piped (to grep, a file) every path is printed whole.
    console = Console() if sys.stdout.isatty() else Console(width=UNBOUNDED_WIDTH)
    if url is not None:
        target = url.split("?", 1)[0]
        try:
            endpoint, params = app.router.match(method.upper(), target)
        except HTTPError as exc:
            click.echo(f"{method.upper()} {target}: {exc.status} {exc.detail}")
            sys.exit(1)
        click.echo(f"{method.upper()} {target} -> {endpoint.pattern}")
        if params:
            click.echo(f"  params: {params}")
        click.echo(f"  handler: {_describe(endpoint.handler)}")
        return
    table = Table(title="routes")
    for column in ("path", "methods", "kind", "handler", "name"):
        table.add_column(column)
    grouped: dict[int, tuple[list[str], Any]] = {}
    for method_name, endpoint in app.router.endpoints:
        grouped.setdefault(id(endpoint), ([], endpoint))[0].append(method_name)
    for methods, endpoint in grouped.values():
        kind = "websocket" if endpoint.is_websocket else "http"
        table.add_row(
            endpoint.pattern,
            ",".join(methods),
            kind,
            _describe(endpoint.handler),
            endpoint.name or "",
        )
    console.print(table)
    channel_rule_list = channel_rules(app)
    if channel_rule_list:
        rules = Table(title="channel rules")
        for column in ("pattern", "publish", "history", "presence", "token", "slow consumer"):
            rules.add_column(column)
        for rule in channel_rule_list:
            rules.add_row(
                rule.pattern,
                rule.publish,
                f"{rule.history} / {rule.history_ttl:g}s" if rule.history else "-",
                ("yes" if rule.presence else "no") + (" +join/leave" if rule.join_leave else ""),
                "yes" if rule.token else "no",
                rule.slow_consumer,
            )
        console.print(rules)


@click.command(short_help="Show versions for bug reports (rtserve, Python, OS).")
def version() -> None:
    """rtserve, Python, event loop and platform versions (for bug reports)."""
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    click.echo(f"rtserve {__version__}")
    click.echo(f"python {platform.python_version()} ({platform.python_implementation()})")
    click.echo(f"event loop {loop}")
    click.echo(f"platform {platform.platform()}")
