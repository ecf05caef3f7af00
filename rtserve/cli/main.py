"""`rtserve` command line: `rtserve run module:app`, `--version`, `--help`."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from rtserve import __version__
from rtserve.cli.channel_cmds import publish, subscribe
from rtserve.cli.loader import load_app
from rtserve.cli.project_cmds import check, routes, version
from rtserve.cli.token_cmd import token
from rtserve.errors import ConfigError
from rtserve.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="rtserve")
def main() -> None:
    """rtserve: a real-time server toolkit (HTTP/1.1, WebSocket, SSE, channels)."""


@main.command()
@click.argument("target", required=False)
@click.option("--config", "config_file", help="The project's YAML file (default: rtserve.yaml).")
@click.option("--host", help="Address to bind (repeat the option for several).", multiple=True)
@click.option("--port", type=int, help="TCP port (0 picks a free one).")
@click.option("--unix-socket", "unix_socket", help="Listen on a unix socket path instead.")
@click.option("--fd", type=int, help="Serve an inherited listening socket descriptor.")
@click.option("--reuse-port", is_flag=True, default=None, help="Set SO_REUSEPORT.")
@click.option("--access-log/--no-access-log", default=None, help="Log every request.")
@click.option("--debug/--no-debug", default=None, help="Tracebacks in error pages.")
@click.option("--tls-cert", help="TLS certificate chain (PEM).")
@click.option("--tls-key", help="TLS private key (PEM).")
@click.option(
    "--reload/--no-reload",
    default=None,
    help="Restart on code and config changes (default: on for a project folder).",
)
def run(
    target: str | None,
    config_file: str | None,
    host: tuple[str, ...],
    port: int | None,
    unix_socket: str | None,
    fd: int | None,
    reuse_port: bool | None,
    access_log: bool | None,
    debug: bool | None,
    tls_cert: str | None,
    tls_key: str | None,
    reload: bool | None,
) -> None:
    """Serve a project (TARGET a folder or its rtserve.yaml; default: here) or the App named
    by TARGET (`module:app` or `file.py:app`)."""
    from rtserve.server.listener import serve

    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    project = config_file or _project_target(target)
    setup_logging()
    if project is not None:
        from rtserve.cli.project_cmds import load_project_app

        app = load_project_app(project)
    else:
        assert target is not None
        try:
            app = load_app(target)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    settings = dataclasses.replace(app.settings)
    if host:
        settings.host = list(host) if len(host) > 1 else host[0]
    overrides = {
        "port": port,
        "unix_socket": unix_socket,
        "fd": fd,
        "reuse_port": reuse_port,
        "access_log": access_log,
        "debug": debug,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    if tls_cert:
        settings.tls = dataclasses.replace(settings.tls, cert=tls_cert, key=tls_key)
    app.settings = settings
    serve(app, settings)


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
if __name__ == "__main__":
    main()
