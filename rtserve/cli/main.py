"""`rtserve` command line: `rtserve run module:app`, `--version`, `--help`."""

from __future__ import annotations

import dataclasses
import sys

import click

from rtserve import __version__
from rtserve.cli.channel_cmds import publish, subscribe
from rtserve.cli.loader import load_app
from rtserve.cli.token_cmd import token
from rtserve.errors import ConfigError
from rtserve.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="rtserve")
def main() -> None:
    """rtserve: a real-time server toolkit (HTTP/1.1, WebSocket, SSE, channels)."""


@main.command()
@click.argument("target")
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
    default=False,
    help="Reload on code changes (accepted now; reloading arrives with projects).",
)
def run(
    target: str,
    host: tuple[str, ...],
    port: int | None,
    unix_socket: str | None,
    fd: int | None,
    reuse_port: bool | None,
    access_log: bool | None,
    debug: bool | None,
    tls_cert: str | None,
    tls_key: str | None,
    reload: bool,
) -> None:
    """Serve the App named by TARGET (`module:app` or `file.py:app`)."""
    from rtserve.server.listener import serve

    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    setup_logging()
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


main.add_command(token)
main.add_command(subscribe)
main.add_command(publish)
if __name__ == "__main__":
    main()
