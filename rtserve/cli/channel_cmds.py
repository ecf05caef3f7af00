"""`rtserve subscribe CHANNEL` and `rtserve publish CHANNEL DATA_JSON`: channels from a shell.

`subscribe` prints each publication as one JSON line (offset, data, info) through
rtserve.client (reconnecting, and recovering what it missed meanwhile); a gap it cannot recover
is reported on stderr. `publish` POSTs to the HTTP publish API with urllib and prints its answer.

Both take the server's base URL (`--url http://host:port`; subscribe also the older
`ws://host:port/rt/ws`). Without it, inside a project (a folder with rtserve.yaml) they reach
the server its `server:` section describes, read as `rtserve run` reads it (`${VAR}` from the
environment and `.env`); elsewhere http://127.0.0.1:8000.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import click

DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_NAME = "rtserve.yaml"
WS_PATH = "/rt/ws"
URL_HELP = (
    "The server's base URL, http://host:port (default: the server of the project here, as "
    f"its {CONFIG_NAME} says; else {DEFAULT_URL})."
)
_WS_SCHEMES = {"http": "ws", "https": "wss"}
_HTTP_SCHEMES = {"ws": "http", "wss": "https"}


class ServerURLs(NamedTuple):
    """Where the server is: its base URL, its channel WebSocket URL, and (when --url did not
    say) a hint for when nothing answers there."""

    base: str
    ws: str
    hint: str


def server_urls(url: str | None) -> ServerURLs:
    """The server's URLs, from `--url` (a base URL, or the older ws://host:port/rt/ws), else
    from the project here, else the default."""
    hint = ""
    if url is None:
        url = project_url(Path.cwd())
        if url is not None:
            hint = f" (the address {CONFIG_NAME} gives; pass --url if the server runs elsewhere)"
        else:
            url = DEFAULT_URL
            hint = f" (no {CONFIG_NAME} here: run this in the project's folder, or pass --url)"
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if parts.scheme in _WS_SCHEMES and parts.netloc:
        base = f"{parts.scheme}://{parts.netloc}{path}"
        return ServerURLs(
            base, f"{_WS_SCHEMES[parts.scheme]}://{parts.netloc}{path}{WS_PATH}", hint
        )
    if parts.scheme in _HTTP_SCHEMES and parts.netloc:
        endpoint = path if path else WS_PATH
        ws = urllib.parse.urlunsplit((parts.scheme, parts.netloc, endpoint, parts.query, ""))
        base_path = path.removesuffix(WS_PATH)
        return ServerURLs(f"{_HTTP_SCHEMES[parts.scheme]}://{parts.netloc}{base_path}", ws, hint)
    raise click.BadParameter(f"expected http://host:port, not {url!r}", param_hint="--url")


def project_url(folder: Path) -> str | None:
    """The base URL of the server of the project in `folder`, from its rtserve.yaml's
    `server` section; None when `folder` holds no project."""
    from rtserve.cli.listening import light_config
    from rtserve.errors import ConfigError

    config = folder / CONFIG_NAME
    if not config.is_file():
        return None
    try:
        server = light_config(str(config)).server
    except ConfigError as exc:  # as `rtserve check` says it, and with its status
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if server.unix_socket or server.fd is not None or server.port == 0:
        how = "a unix socket" if server.unix_socket else "no fixed port"
        raise click.UsageError(f"{config} serves on {how}: pass --url http://host:port")
    host = server.hosts[0] if server.hosts else ""
    if host in ("", "0.0.0.0"):  # every address: this machine's is one of them
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls.enabled else "http"
    return f"{scheme}://{host}:{server.port}"


def _parse_json(value: str | None, option: str) -> Any:
    """The JSON value of `option` (None when not given); click.BadParameter if not JSON."""
    try:
        return None if value is None else json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


def _parse_since(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    offset, sep, epoch = value.partition(":")
    if not sep or not offset.isdigit():
        raise click.BadParameter("expected OFFSET:EPOCH, e.g. 42:a1b2c3", param_hint="--since")
    return int(offset), epoch


@click.command(short_help="Print a channel's publications as JSON lines.")
@click.argument("channel")
@click.option("--url", help=URL_HELP)
@click.option("--token", envvar="RTSERVE_TOKEN", help="Connection token (or RTSERVE_TOKEN).")
@click.option("--since", "since", metavar="OFFSET:EPOCH", help="Start after this position.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many publications.")
@click.option("--data", "data_json", metavar="JSON", help="Data for the connect (on_connect).")
@click.option(
    "--filter",
    "filter_json",
    metavar="JSON",
    help='Only publications whose tags match this filter, e.g. \'{"eq": ["region", "eu"]}\'.',
)
def subscribe(
    channel: str,
    url: str | None,
    token: str | None,
    since: str | None,
    count: int | None,
    data_json: str | None,
    filter_json: str | None,
) -> None:
    """Print each publication of CHANNEL as a JSON line (Ctrl-C to stop)."""
    position = _parse_since(since)
    data = _parse_json(data_json, "--data")
    tag_filter = _parse_json(filter_json, "--filter")
    urls = server_urls(url)
    try:
        run = _subscribe(channel, urls, token, position, count, data, tag_filter)
        sys.exit(asyncio.run(run))
    except KeyboardInterrupt:
        sys.exit(130)


async def _subscribe(
    channel: str,
    urls: ServerURLs,
    token: str | None,
    since: tuple[int, str] | None,
    count: int | None,
    data: object = None,
    tag_filter: Any = None,
) -> int:
    from rtserve.client import Client, ClientError, Disconnected, Unrecovered
    from rtserve.protocol.ws_client import InvalidHandshake

    client = Client(urls.ws, token=token, data=data)
    try:
        await client.connect()
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        click.echo(f"error: cannot connect to {urls.ws}: {exc}{urls.hint}", err=True)
        return 1
    except ClientError as exc:
        click.echo(f"error: connect refused: {exc.message} (code {exc.code})", err=True)
        return 1
    seen = 0
    try:
        sub = await client.subscribe(channel, since=since, filter=tag_filter)
        while count is None or seen < count:
            try:
                async for pub in sub:
                    line: dict[str, Any] = {"offset": pub.offset, "data": pub.data}
                    if pub.info is not None:
                        line["info"] = {"client": pub.info.client, "user": pub.info.user}
                        if pub.info.info is not None:
                            line["info"]["info"] = pub.info.info
                    if pub.tags:
                        line["tags"] = pub.tags
                    click.echo(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
                    seen += 1
                    if count is not None and seen >= count:
                        break
                else:
                    return 0  # the subscription ended
            except Unrecovered as exc:
                where = f"{exc.since.offset}:{exc.since.epoch}" if exc.since else "the start"
                now = f"{exc.position.offset}:{exc.position.epoch}"
                click.echo(
                    f"warning: publications after {where} were lost; continuing from {now}",
                    err=True,
                )
    except ClientError as exc:
        click.echo(f"error: {exc.message} (code {exc.code})", err=True)
        return 1
    except (Disconnected, TimeoutError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    finally:
        await client.close()
    return 0


@click.command(short_help="Publish a JSON value to a channel.")
@click.argument("channel")
@click.argument("data_json", metavar="DATA_JSON")
@click.option("--url", help=URL_HELP)
@click.option("--api-key", envvar="RTSERVE_API_KEY", help="Publish API key (or RTSERVE_API_KEY).")
@click.option("--idempotency-key", help="Publish at most once for this key.")
@click.option(
    "--tag",
    "tags",
    metavar="NAME=VALUE",
    multiple=True,
    help="A tag of the publication, for subscribers' filters (repeatable).",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
def publish(
    channel: str,
    data_json: str,
    url: str | None,
    api_key: str | None,
    idempotency_key: str | None,
    tags: tuple[str, ...],
    timeout: float,
) -> None:
    """Publish DATA_JSON (any JSON value) to CHANNEL through the server's publish API."""
    try:
        data = json.loads(data_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA_JSON") from None
    body: dict[str, Any] = {"channel": channel, "data": data}
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if tags:
        body["tags"] = _parse_tags(tags)
    urls = server_urls(url)
    endpoint = urls.base + "/rt/publish"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        endpoint, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and not api_key:
            message = "the publish API needs its key: set RTSERVE_API_KEY or pass --api-key"
        else:
            message = _error_message(exc.code, exc.reason, exc.read())
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        click.echo(f"error: cannot reach {endpoint}: {reason}{urls.hint}", err=True)
        sys.exit(1)
    try:
        click.echo(json.dumps(json.loads(answer), ensure_ascii=False, separators=(",", ":")))
    except ValueError:
        click.echo(answer.decode("utf-8", "replace"))


def _parse_tags(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--tag NAME=VALUE` options as a map (the server checks the sizes)."""
    tags: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, not {pair!r}", param_hint="--tag")
        tags[name] = value
    return tags


def _error_message(status: int, reason: str, body: bytes) -> str:
    """The server's error message from `{"error": {"code", "message"}}`, else the status."""
    try:
        error = json.loads(body)["error"]
        return f"{error['message']} (code {error['code']}, HTTP {status})"
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()[:200]
        return f"HTTP {status} {reason}" + (f": {text}" if text else "")
