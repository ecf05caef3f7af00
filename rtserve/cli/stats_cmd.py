"""`rtserve stats`: a running server's admin interface, as a live dashboard, one snapshot or
NDJSON.

It finds the server by itself: the project's admin socket (`admin.socket` of its rtserve.yaml,
read without importing the project; `.rtserve/admin.sock` by default), or `--url` with a
token. It talks HTTP/1.1 with http.client (over AF_UNIX for the socket). Rates are the
difference of two polls over the server's uptime between them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from rtserve.errors import RtserveError
from rtserve.histogram import quantile

ADMIN_PREFIX = "/rt/admin"
CONFIG_NAME = "rtserve.yaml"
TOP = 10
TIMEOUT = 5.0
_UNIX_PATH_MAX = 100
# (key in "rates", where the counter is in the stats, label)
RATES = (
    ("requests", ("totals", "requests"), "requests"),
    ("publications", ("hub", "publications"), "published"),
    ("deliveries", ("hub", "deliveries"), "deliveries"),
    ("connections", ("totals", "connections"), "connections"),
    ("messages_in", ("totals", "ws_messages_received"), "ws messages in"),
    ("frames_out", ("totals", "ws_frames_sent"), "ws frames out"),
    ("bytes_in", ("totals", "bytes_received"), "bytes in"),
    ("bytes_out", ("totals", "bytes_sent"), "bytes out"),
)
# (key in "rates", which histogram of stats["latency_seconds"], quantile)
LATENCIES = (
    ("http_p50", "http", 0.5),
    ("http_p99", "http", 0.99),
    ("publish_p50", "broker_publish", 0.5),
    ("publish_p99", "broker_publish", 0.99),
)
SORTS = ("queued", "age")
FILTERS = (None, "channel", "websocket", "http")


class StatsError(RtserveError):
    """What to tell the user before exiting 1."""


# --- talking to the admin interface ----------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (through /proc/self/fd when the path is too long)."""

    def __init__(self, path: Path, timeout: float = TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            path = str(self.unix_path)
            if len(os.fsencode(path)) > _UNIX_PATH_MAX and os.path.isdir("/proc/self/fd"):
                fd = os.open(self.unix_path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                try:
                    sock.connect(f"/proc/self/fd/{fd}/{self.unix_path.name}")
                finally:
                    os.close(fd)
            else:
                sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """GETs on one admin interface: a unix socket, or an http:// URL with a Bearer token."""

    def __init__(
        self, *, socket_path: Path | None = None, url: str | None = None, token: str | None = None
    ) -> None:
        self.socket_path = socket_path
        self.token = token
        self.host = ""
        self.port = 0
        self.base = ""
        if url is not None:
            parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme != "http" or not parts.hostname:
                raise StatsError(f"--url must be http://host:port, not {url!r}")
            self.host = parts.hostname
            try:
                self.port = parts.port or 80
            except ValueError:
                raise StatsError(f"--url has a bad port: {url!r}") from None
            self.base = parts.path.rstrip("/")
            self.where = f"http://{parts.netloc}{self.base}"
        elif socket_path is not None:
            self.where = f"unix:{socket_path}"
        else:
            raise StatsError("no admin socket and no --url to connect to")

    def _connection(self) -> http.client.HTTPConnection:
        if self.socket_path is not None and not self.host:
            return UnixHTTPConnection(self.socket_path)
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def get(self, path: str) -> Any:
        headers = {"Accept": "application/json"}
        if self.token and self.host:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request("GET", self.base + ADMIN_PREFIX + path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except FileNotFoundError:
            raise StatsError(
                f"no running server: {self.where} does not exist (`rtserve run` starts one)"
            ) from None
        except ConnectionRefusedError:
            raise StatsError(
                f"no running server: {self.where} refused the connection (`rtserve run` starts one)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise StatsError(f"cannot talk to {self.where}: {exc}") from None
        finally:
            conn.close()
        if response.status == 401:
            if self.token:
                raise StatsError(
                    f"{self.where} refused the token (401): check --token or RTSERVE_ADMIN_TOKEN"
                )
            raise StatsError(
                f"{self.where} needs a token (401): pass --token or set RTSERVE_ADMIN_TOKEN"
            )
        if response.status == 404 and path.startswith("/stats"):
            raise StatsError(
                f"{self.where} is not an rtserve admin interface (404 on {ADMIN_PREFIX}/stats)"
            )
        if response.status != 200:
            raise StatsError(f"{self.where}: {ADMIN_PREFIX}{path} answered {response.status}")
        try:
            return json.loads(body)
        except ValueError:
            raise StatsError(f"{self.where} is not an rtserve admin interface (not JSON)") from None

    def stats(self) -> dict[str, Any]:
        data = self.get("/stats")
        if not isinstance(data, dict) or "totals" not in data or "open" not in data:
            raise StatsError(f"{self.where} is not an rtserve admin interface (unknown stats)")
        return data

    def channels(self) -> list[dict[str, Any]]:
        return list(self.get(f"/channels?limit={TOP}").get("channels", []))

    def connections(self, transport: str | None = None, sort: str = "queued") -> list[Any]:
        """The top connections, sorted by the server (`queued` bytes or `age`)."""
        query = f"/connections?limit={TOP}&sort={sort}"
        if transport is not None:
            query += f"&transport={transport}"
        return list(self.get(query).get("connections", []))


def find_socket(path: str | None) -> tuple[Path | None, str | None, str | None]:
    """The admin socket of the project at `path` (a folder or its rtserve.yaml; default: here),
    read from its rtserve.yaml as `rtserve run` reads it (`${VAR}`s from the environment and
    `.env`) without importing the project; else its `listen` address and `token` when it has
    no socket. (socket, listen, token)."""
    from rtserve.cli.listening import light_config
    from rtserve.config.project import AdminConfig
    from rtserve.errors import ConfigError

    candidate = Path(path) if path is not None else Path.cwd()
    if path is not None and not candidate.exists():
        raise StatsError(f"no project at {path}")
    config = candidate / CONFIG_NAME if candidate.is_dir() else candidate
    admin = AdminConfig()
    if config.is_file():
        try:
            admin = light_config(str(config)).admin
        except ConfigError as exc:
            raise StatsError(str(exc)) from None
    if not admin.enabled:
        raise StatsError(f"the admin interface is off in {config} (admin: enabled: false)")
    if not admin.socket:
        if not admin.listen:
            raise StatsError(f"{config} sets no admin socket and no listen address: use --url")
        return None, admin.listen, admin.token
    socket_path = config.absolute().parent / admin.socket
    if not config.is_file() and not socket_path.exists():  # nor a `module:app` served here
        raise StatsError(
            f"no {CONFIG_NAME} in {config.absolute().parent}: run rtserve stats in a project "
            "folder, give one as PATH, or use --url for a server elsewhere"
        )
    return socket_path, admin.listen, admin.token


# --- rates and figures -----------------------------------------------------------------------


def _counter(stats: dict[str, Any], where: tuple[str, str]) -> float:
    value = stats.get(where[0], {}).get(where[1], 0)
    return float(value) if isinstance(value, int | float) else 0.0


def rates(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, float] | None:
    """Per-second rates between two polls (by the server's uptime); None without a previous
    poll of the same process."""
    if previous is None or previous.get("pid") != current.get("pid"):
        return None
    elapsed = float(current.get("uptime_seconds", 0)) - float(previous.get("uptime_seconds", 0))
    if elapsed <= 0:
        return None
    out: dict[str, Any] = {
        key: round(max(0.0, _counter(current, w) - _counter(previous, w)) / elapsed, 3)
        for key, w, _ in RATES
    }
    before = previous.get("latency_seconds", {})
    now = current.get("latency_seconds", {})
    for key, name, q in LATENCIES:
        out[key] = _interval_quantile(before.get(name), now.get(name), q)
    out["interval_seconds"] = round(elapsed, 3)
    return out


def _interval_quantile(before: Any, now: Any, q: float) -> float | None:
    """The `q` quantile of what a histogram counted between two polls (None: nothing)."""
    if not isinstance(now, dict) or not isinstance(before, dict):
        return None
    counts, earlier = now.get("counts"), before.get("counts")
    if not isinstance(counts, list) or not isinstance(earlier, list) or len(counts) != len(earlier):
        return None
    return quantile(now["bounds"], [max(0, a - b) for a, b in zip(counts, earlier, strict=True)], q)


def channel_rates(
    previous: list[dict[str, Any]] | None, current: list[dict[str, Any]], elapsed: float | None
) -> dict[str, float]:
    """Publications per second of each channel listed in both polls."""
    if not previous or not elapsed:
        return {}
    before = {c.get("name"): c.get("publications") for c in previous}
    out: dict[str, float] = {}
    for c in current:
        old, new = before.get(c.get("name")), c.get("publications")
        if isinstance(old, int) and isinstance(new, int) and new >= old:
            out[str(c["name"])] = round((new - old) / elapsed, 3)
    return out


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def counted(n: Any, noun: str) -> str:
    """`1 channel`, `2 channels`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ms(seconds: Any) -> str:
    return f"{float(seconds or 0) * 1000:.1f} ms"


def _latency(rate: dict[str, Any] | None, stats: dict[str, Any], name: str, key: str) -> str:
    """p50 / p99 over the last interval (over the whole uptime for one snapshot)."""
    if rate is not None:
        p50, p99 = rate.get(f"{key}_p50"), rate.get(f"{key}_p99")
    else:
        histogram = stats.get("latency_seconds", {}).get(name, {})
        p50, p99 = histogram.get("p50"), histogram.get("p99")
    if p50 is None or p99 is None:
        return "-"
    return f"p50 {_ms(p50)}  p99 {_ms(p99)}"


def sort_connections(conns: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """The top connections: most queued bytes first, or oldest first."""
    if sort == "age":
        key: Any = lambda c: -(c.get("age_seconds") or 0.0)  # noqa: E731
    else:
        key = lambda c: (-(c.get("queued_bytes") or 0), -(c.get("age_seconds") or 0.0))  # noqa: E731
    return sorted(conns, key=key)[:TOP]


class View:
    """What one screen shows, as plain rows: both renderers (rich, plain text) use it."""

    def __init__(
        self,
        where: str,
        stats: dict[str, Any],
        channels: list[dict[str, Any]],
        conns: list[dict[str, Any]],
        rate: dict[str, Any] | None,
        sort: str = "queued",
        channel_rate: dict[str, float] | None = None,
        transport: str | None = None,
    ) -> None:
        self.where = where
        process = stats.get("process", {})
        rss = process.get("rss_bytes", process.get("max_rss_bytes", 0))
        cpu = process.get("cpu_user_seconds", 0) + process.get("cpu_system_seconds", 0)
        lag = stats.get("loop_lag_seconds", {})
        self.header = (
            f"pid {stats.get('pid')}  up {_duration(stats.get('uptime_seconds', 0))}  "
            f"rss {_bytes(rss)}  cpu {cpu:.2f} s  "
            f"loop lag {_ms(lag.get('last'))} (max {_ms(lag.get('max'))})"
            + ("" if stats.get("serving", True) else "  [shutting down]")
        )
        self.workers = [
            (
                str(w.get("worker")),
                str(w.get("pid")),
                str(w.get("connections", 0)),
                _bytes(w.get("rss_bytes") or 0),
                f"{w.get('cpu_seconds', 0):.2f} s",
                _ms(w.get("loop_lag_seconds", {}).get("last")),
            )
            for w in stats.get("workers", [])
        ]
        opened = stats.get("open", {})
        # SSE streams and waiting polls are HTTP connections too: shown after the total.
        among_http = ("sse", "poll")
        base = [(t, n) for t, n in opened.items() if t not in among_http]
        self.open = [(t, str(n)) for t, n in base] + [("total", str(sum(n for _, n in base)))]
        self.open += [(t, str(opened[t])) for t in among_http if t in opened]
        self.totals: list[tuple[str, str, str]] = []
        for key, where_, label in RATES:
            value = int(_counter(stats, where_))
            if key.startswith("bytes"):
                shown = _bytes(value)
                per_s = "-" if rate is None else f"{_bytes(rate[key])}/s"
            else:
                shown = str(value)
                per_s = "-" if rate is None else f"{rate[key]:.1f}/s"
            self.totals.append((label, shown, per_s))
        span = "last interval" if rate is not None else "since start"
        self.latency = [
            (f"HTTP response ({span})", _latency(rate, stats, "http", "http")),
            (f"broker publish ({span})", _latency(rate, stats, "broker_publish", "publish")),
        ]
        ch = stats.get("channels", {})
        self.channel_summary = ", ".join(
            counted(ch.get(key, 0), noun)
            for key, noun in (
                ("count", "channel"),
                ("subscribers", "subscriber"),
                ("users", "user"),
            )
        )
        per_channel = channel_rate or {}
        self.channels = [
            (
                str(c.get("name")),
                str(c.get("subscribers")),
                f"{per_channel[c['name']]:.1f}/s" if c.get("name") in per_channel else "-",
            )
            for c in channels[:TOP]
        ]
        self.sort = sort
        self.transport = transport
        self.conns = [
            (
                str(c.get("id", "")),
                str(c.get("transport", "")),
                str(c.get("peer", "")),
                str(c.get("user") or "-"),
                str(c.get("queued_bytes", 0)),
                "-" if c.get("age_seconds") is None else _duration(c["age_seconds"]),
                ",".join(c.get("channels") or []) or "-",
            )
            for c in sort_connections(conns, sort)
        ]

    def connections_title(self) -> str:
        by = "queued bytes" if self.sort == "queued" else "age"
        only = "" if self.transport is None else f", {self.transport} only"
        return f"top {TOP} by {by}{only}"


NONE = "none"  # what an empty listing shows
WORKER_COLUMNS = ("worker", "pid", "connections", "rss", "cpu", "loop lag")
CONN_COLUMNS = ("id", "transport", "peer", "user", "queued", "age", "channels")


def plain(view: View) -> str:
    """A View as plain text."""
    lines = [f"rtserve at {view.where}", view.header]
    if view.workers:
        lines.append(f"workers ({len(view.workers)}, figures below summed):")
        lines += _columns(WORKER_COLUMNS, view.workers)
    lines.append("open: " + ", ".join(f"{t} {n}" for t, n in view.open))
    lines.append(
        "totals: "
        + ", ".join(
            f"{label} {n} ({r})" if r != "-" else f"{label} {n}" for label, n, r in view.totals
        )
    )
    lines.append("latency: " + ", ".join(f"{label} {value}" for label, value in view.latency))
    lines.append(f"channels: {view.channel_summary}")
    for name, subs, per_s in view.channels:
        lines.append(f"  {name}  {subs}" + ("" if per_s == "-" else f"  {per_s}"))
    lines.append(f"connections ({view.connections_title()}):")
    lines += _columns(CONN_COLUMNS, view.conns) if view.conns else [f"  {NONE}"]
    return "\n".join(line.rstrip() for line in lines)


def _columns(names: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows as aligned plain-text columns under their names."""
    table: list[tuple[str, ...]] = [names, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(names))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table]


def rich_view(view: View, footer: str | None = None) -> Any:
    """A View as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def titled(title: str, **options: Any) -> Table:
        # A table's title wraps at the table's width: make the table as wide as its title.
        return Table(title=title, title_justify="left", min_width=len(title), **options)

    header = Text.assemble(("rtserve ", "bold"), (view.where, "cyan"), "\n", view.header)
    opened = Text("open: " + ", ".join(f"{t} {n}" for t, n in view.open))
    totals = titled("totals")
    totals.add_column("")
    totals.add_column("total", justify="right")
    totals.add_column("rate", justify="right")
    for total in view.totals:
        totals.add_row(*total)
    latency = titled("latency", show_header=False)
    latency.add_column("")
    latency.add_column("", justify="right")
    for label, value in view.latency:
        latency.add_row(label, value)
    channels = titled(f"top channels ({view.channel_summary})")
    channels.add_column("channel")
    channels.add_column("subscribers", justify="right")
    channels.add_column("publications/s", justify="right")
    for channel in view.channels:
        channels.add_row(*channel)
    conns = titled(f"connections, {view.connections_title()}")
    for name in CONN_COLUMNS:
        conns.add_column(name, justify="right" if name in ("queued", "age") else "left")
    for row in view.conns:
        conns.add_row(*row)
    for table, rows in ((channels, view.channels), (conns, view.conns)):
        if not rows:
            table.add_row(Text(NONE, style="dim"))
    parts: list[Any] = [header]
    if view.workers:
        workers = titled(f"workers ({len(view.workers)}; the figures below are their sums)")
        for name in WORKER_COLUMNS:
            workers.add_column(name, justify="left" if name == "worker" else "right")
        for worker_row in view.workers:
            workers.add_row(*worker_row)
        parts.append(workers)
    parts += [opened, totals, latency, channels, conns]
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


# --- keys ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function `wait(timeout) -> key or None`: a key pressed on the terminal (cbreak mode,
    restored on leaving), or just a sleep when stdin is not a terminal."""
    stdin = sys.stdin
    try:
        fd = stdin.fileno()
        interactive = os.isatty(fd)
    except (OSError, ValueError, AttributeError):
        interactive = False
    if not interactive:
        yield lambda timeout: time.sleep(timeout)
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)

    def wait(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        data = os.read(fd, 1)
        if not data:  # end of input: no more keys, just wait
            time.sleep(max(0.0, timeout))
            return None
        return data.decode("utf-8", "replace")

    try:
        tty.setcbreak(fd)
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# --- the modes -------------------------------------------------------------------------------


class Dashboard:
    """The live dashboard's state: the latest poll and how connections are sorted and
    filtered (keys change those between polls)."""

    FOOTER = (
        "q: quit  s: sort connections (queued bytes / age)  "
        "f: filter connections (all / channel / websocket / http)"
    )

    def __init__(self, client: AdminClient) -> None:
        self.client = client
        self.sort = 0
        self.filter = 0
        self.stats: dict[str, Any] = {}
        self.channels: list[dict[str, Any]] = []
        self.rate: dict[str, Any] | None = None
        self.channel_rate: dict[str, float] = {}

    def poll(self) -> None:
        """Fetch the stats and channels; rates are against the previous poll."""
        previous, previous_channels = self.stats or None, self.channels or None
        self.stats = self.client.stats()
        self.channels = self.client.channels()
        self.rate = rates(previous, self.stats)
        elapsed = None if self.rate is None else self.rate["interval_seconds"]
        self.channel_rate = channel_rates(previous_channels, self.channels, elapsed)

    def key(self, key: str) -> bool:
        """Apply a key; False to quit."""
        if key in ("q", "Q"):
            return False
        if key in ("s", "S"):
            self.sort = (self.sort + 1) % len(SORTS)
        elif key in ("f", "F"):
            self.filter = (self.filter + 1) % len(FILTERS)
        return True

    def view(self) -> View:
        transport = FILTERS[self.filter]
        conns = self.client.connections(transport, SORTS[self.sort])
        return View(
            self.client.where,
            self.stats,
            self.channels,
            conns,
            self.rate,
            SORTS[self.sort],
            self.channel_rate,
            transport,
        )


def run_dashboard(client: AdminClient, interval: float, ticks: int | None) -> None:
    from rich.console import Console
    from rich.live import Live

    dashboard = Dashboard(client)
    with _keys() as wait, Live(console=Console(), auto_refresh=False, screen=False) as live:
        count = 0
        while ticks is None or count < ticks:
            dashboard.poll()
            live.update(rich_view(dashboard.view(), Dashboard.FOOTER), refresh=True)
            count += 1
            if ticks is not None and count >= ticks:
                break
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                key = wait(left)
                if key is None:
                    continue
                if not dashboard.key(key):
                    return
                live.update(rich_view(dashboard.view(), Dashboard.FOOTER), refresh=True)


def run_once(client: AdminClient) -> None:
    stats = client.stats()
    view = View(client.where, stats, client.channels(), client.connections(), None)
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(rich_view(view))
    else:
        click.echo(plain(view))


def run_ndjson(client: AdminClient, interval: float, ticks: int | None) -> None:
    """One JSON line of stats (with `rates` since the previous poll) every `interval` s."""
    previous = client.stats()
    count = 0
    while ticks is None or count < ticks:
        time.sleep(interval)
        stats = client.stats()
        line = dict(stats, rates=rates(previous, stats))
        previous = stats
        click.echo(json.dumps(line, separators=(",", ":")))
        sys.stdout.flush()
        count += 1


@click.command(short_help="Show a running server's stats (live, once, JSON).")
@click.argument("path", required=False)
@click.option("--url", help="The admin interface over HTTP: http://host:port.")
@click.option(
    "--token",
    envvar="RTSERVE_ADMIN_TOKEN",
    help="Bearer token for --url (default: $RTSERVE_ADMIN_TOKEN).",
)
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats JSON (once).")
@click.option("--watch", is_flag=True, help="JSON: one NDJSON line per interval (until Ctrl-C).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--ticks", type=click.IntRange(min=1), default=None, hidden=True)
def stats(
    path: str | None,
    url: str | None,
    token: str | None,
    once: bool,
    as_json: bool,
    watch: bool,
    interval: float,
    ticks: int | None,
) -> None:
    """Show a running server's stats: a live dashboard (q quits, s sorts and f filters the
    connections), one snapshot (--once), JSON (--json) or NDJSON (--json --watch; the default
    when stdout is not a terminal). Finds the project's admin socket (PATH a project folder or
    its rtserve.yaml; default: here), or use --url with --token."""
    try:
        if url is not None:
            if path is not None:
                raise click.UsageError("give PATH or --url, not both")
            client = AdminClient(url=url, token=token)
        else:
            socket_path, listen, config_token = find_socket(path)
            if socket_path is None:
                assert listen is not None
                client = AdminClient(url=f"http://{listen}", token=token or config_token)
            else:
                client = AdminClient(socket_path=socket_path)
        if once and watch:
            raise click.UsageError("give --once or --watch, not both")
        if once and not as_json:
            run_once(client)
        elif as_json and not watch:
            click.echo(json.dumps(client.stats(), separators=(",", ":")))
        elif as_json or watch or not sys.stdout.isatty():
            run_ndjson(client, interval, ticks)
        else:
            run_dashboard(client, interval, ticks)
    except StatsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(0)
