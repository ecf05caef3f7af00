"""`rtserve` command line: `rtserve run module:app`, `--version`, `--help`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from rtserve import __version__
from rtserve.cli.channel_cmds import publish, subscribe
from rtserve.cli.devcert_cmd import dev_cert
from rtserve.cli.loader import load_app
from rtserve.cli.new_cmd import new
from rtserve.cli.options import apply_options, server_options
from rtserve.cli.project_cmds import check, routes, version
from rtserve.cli.stats_cmd import stats
from rtserve.cli.token_cmd import token
from rtserve.errors import ConfigError
from rtserve.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="rtserve")
def main() -> None:
    """rtserve: a real-time server toolkit (HTTP/1.1, WebSocket, SSE, channels)."""


@main.command(short_help="Serve a project or an App (reloading on changes).")
@click.argument("target", required=False)
@click.option("--config", "config_file", help="The project's YAML file (default: rtserve.yaml).")
@server_options
@click.option(
    "--reload/--no-reload",
    default=None,
    help="Restart on code and config changes (default: on for a project folder).",
)
@click.option("--poll", is_flag=True, help="Reload: poll for changes (Docker, WSL, network drive).")
@click.option(
    "--reload-grace",
    type=float,
    default=2.0,
    show_default=True,
    help="Reload: seconds the replaced worker's requests get (its WebSockets close with 1012).",
)
def run(
    target: str | None,
    config_file: str | None,
    reload: bool | None,
    poll: bool,
    reload_grace: float,
    **options: Any,
) -> None:
    """Serve a project (TARGET a folder or its rtserve.yaml; default: here) or the App named
    by TARGET (`module:app` or `file.py:app`); an ASGI app there (`myproject.asgi:application`)
    is served whole, with reload, workers and stats."""
    from rtserve.server.listener import serve

    if options.get("tls_key") and not options.get("tls_cert"):
        raise click.UsageError("--tls-key needs --tls-cert")
    project = config_file or _project_target(target)
    fd = options.get("fd")
    if reload is None:
        reload = project is not None and fd is None
    workers = _workers(target, project, options)
    if workers > 1 and fd is not None:
        raise click.UsageError("--workers binds the socket itself: leave out --fd")
    if reload or workers > 1:
        if fd is not None:
            raise click.UsageError("--reload binds the socket itself: leave out --fd")
        if reload_grace < 0:
            raise click.UsageError("--reload-grace must be 0 or more")
        from rtserve.cli.reload import supervise

        sys.exit(supervise(target, project, options, watch=reload, poll=poll, grace=reload_grace))
    setup_logging()
    app = load_target(target, project)
    app.settings = apply_options(app.settings, options)
    serve(app, app.settings)


def _workers(target: str | None, project: str | None, options: dict[str, Any]) -> int:
    """How many workers `run` starts: --workers, else the project's `server.workers` (read
    without importing it; a module:app target says it with --workers)."""
    if options.get("workers") is not None:
        if options["workers"] < 1:
            raise click.UsageError("--workers must be 1 or more")
        return int(options["workers"])
    if project is None:
        return 1
    from rtserve.cli.listening import light_config

    try:
        return int(light_config(project).server.workers)
    except Exception:
        return 1  # what is wrong is reported when the project loads


def load_target(target: str | None, project: str | None) -> Any:
    """The App `run` serves: the project's (or TARGET's); print what is wrong and exit 2."""
    if project is not None:
        from rtserve.cli.project_cmds import load_project_app

        return load_project_app(project)
    assert target is not None
    try:
        return load_app(target)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _project_target(target: str | None) -> str | None:
    """The project path TARGET names, or None when it names a Python App."""
    if target is None:
        if not os.path.exists("rtserve.yaml"):
            raise click.UsageError(
                "no rtserve.yaml here: run inside a project, or name one (a folder, its "
                "rtserve.yaml, or module:app)"
            )
        return "."
    if os.path.isdir(target) or target.endswith((".yaml", ".yml")):
        return target
    return None


main.add_command(token)
main.add_command(check)
main.add_command(routes)
main.add_command(version)
main.add_command(subscribe)
main.add_command(publish)
main.add_command(new)
main.add_command(stats)
main.add_command(dev_cert)
if __name__ == "__main__":
    main()
