"""The collector: samples this machine and publishes to the dashboard over the publish API.

It runs as a process of its own, beside (or far from) the server: a service outside the
server feeding a channel is the usual shape of a dashboard (a metrics agent, a job queue, a
database trigger). Each sample is one `POST /rt/publish` to the channel `metrics`, with the
API key as `Authorization: Bearer` and an idempotency key, so a retry after a lost answer
never shows a sample twice.

    python examples/live_dashboard/collector.py                       # one sample a second
    python examples/live_dashboard/collector.py --interval 0.2 --count 50
    python examples/live_dashboard/collector.py --once --print        # one sample, shown too

A sample (standard library only; on Linux everything comes from /proc and
`os.getloadavg()`, elsewhere what cannot be read is None):

    {"host": "box", "seq": 7, "time": 1795651878.25, "interval": 1.0,
     "cpu_percent": 23.5, "cpus": [40.1, 6.9], "load1": 0.52, "load5": 0.4, "load15": 0.31,
     "mem_total": 4110471168, "mem_available": 2872246272, "mem_used_percent": 30.1,
     "net_rx_bytes_per_s": 1830.0, "net_tx_bytes_per_s": 912.0, "lo_bytes_per_s": 51200.0}

CPU and network figures are rates between two samples: the first sample has None for them.
`net_*` add up every interface but the loopback, whose traffic (a load test on this machine,
say) is `lo_bytes_per_s`.

Exit status: 0 after `--count` samples (or Ctrl-C); 1 when the server refuses the key or the
channel (401, 403, 404: retrying cannot help). A post whose connection fails is sent once more
at once, with the same idempotency key; what still fails (the server down, a 503 while it
restarts) is logged, and the next sample goes on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHANNEL = "metrics"
DEV_API_KEY = "dev-only-dashboard-key"  # the example's default; set DASHBOARD_API_KEY for real

log = logging.getLogger("live_dashboard.collector")


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reading:
    """Raw counters at one moment: CPU jiffies (busy, total) per line of /proc/stat (all CPUs
    first), network bytes (non-loopback rx, tx; loopback rx + tx)."""

    at: float
    cpu: list[tuple[int, int]] | None
    net: tuple[int, int, int] | None


class Sampler:
    """Samples of this machine. Keeps the previous counters, so CPU and network figures are
    rates since the previous `sample()`. `proc` is where /proc is (a test gives a fake one)."""

    def __init__(self, host: str | None = None, proc: Path = Path("/proc")) -> None:
        self.host = host or socket.gethostname()
        self.proc = proc
        self.seq = 0
        self._last = self._read()

    def sample(self) -> dict[str, Any]:
        """The next sample (the fields of the module docstring); never raises for a missing
        or unreadable source, whose fields are then None."""
        now = self._read()
        before, self._last = self._last, now
        self.seq += 1
        elapsed = now.at - before.at
        cpus = _cpu_percents(before.cpu, now.cpu)
        total, available = self._memory()
        load = _load()
        sample: dict[str, Any] = {
            "host": self.host,
            "seq": self.seq,
            "time": round(time.time(), 3),
            "interval": round(elapsed, 3),
            "cpu_percent": cpus[0] if cpus else None,
            "cpus": cpus[1:] if cpus else [],
            "load1": load[0],
            "load5": load[1],
            "load15": load[2],
            "mem_total": total,
            "mem_available": available,
            "mem_used_percent": (
                round(100 * (total - available) / total, 1)
                if total and available is not None
                else None
            ),
        }
        rates = _rates(before.net, now.net, elapsed)
        for name, value in zip(
            ("net_rx_bytes_per_s", "net_tx_bytes_per_s", "lo_bytes_per_s"), rates, strict=True
        ):
            sample[name] = value
        return sample

    def _read(self) -> _Reading:
        return _Reading(time.monotonic(), self._cpu(), self._net())

    def _text(self, name: str) -> str | None:
        try:
            return (self.proc / name).read_text()
        except OSError:
            return None

    def _cpu(self) -> list[tuple[int, int]] | None:
        """(busy, total) jiffies of the `cpu` line and of each `cpuN` line of /proc/stat."""
        text = self._text("stat")
        if text is None:
            return None
        times = []
        for line in text.splitlines():
            fields = line.split()
            if not fields or not fields[0].startswith("cpu"):
                continue
            try:
                values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq ...
            except ValueError:
                return None
            if len(values) < 5:
                return None
            total = sum(values)
            times.append((total - values[3] - values[4], total))  # idle and iowait: not busy
        return times or None

    def _memory(self) -> tuple[int | None, int | None]:
        """(MemTotal, MemAvailable) in bytes (/proc/meminfo gives KiB)."""
        text = self._text("meminfo")
        if text is None:
            return None, None
        values: dict[str, int] = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name.strip()] = int(parts[0]) * 1024
        return values.get("MemTotal"), values.get("MemAvailable")

    def _net(self) -> tuple[int, int, int] | None:
        """Bytes received and sent by every interface but `lo`, and lo's received + sent."""
        text = self._text("net/dev")
        if text is None:
            return None
        rx = tx = lo = 0
        for line in text.splitlines()[2:]:  # two header lines
            name, sep, rest = line.partition(":")
            fields = rest.split()
            if not sep or len(fields) < 9:
                continue
            try:
                received, sent = int(fields[0]), int(fields[8])
            except ValueError:
                return None
            if name.strip() == "lo":
                lo += received + sent
            else:
                rx += received
                tx += sent
        return rx, tx, lo


def _cpu_percents(
    before: list[tuple[int, int]] | None, now: list[tuple[int, int]] | None
) -> list[float | None]:
    """Busy percent of each CPU line between two readings (all CPUs first); [] when unknown."""
    if before is None or now is None or len(before) != len(now):
        return []
    out: list[float | None] = []
    for (busy0, total0), (busy1, total1) in zip(before, now, strict=True):
        span = total1 - total0
        out.append(round(100 * (busy1 - busy0) / span, 1) if span > 0 else None)
    return out


def _rates(
    before: tuple[int, int, int] | None, now: tuple[int, int, int] | None, elapsed: float
) -> tuple[float | None, float | None, float | None]:
    if before is None or now is None or elapsed <= 0:
        return None, None, None
    rx, tx, lo = (round(max(0, b - a) / elapsed, 1) for a, b in zip(before, now, strict=True))
    return rx, tx, lo


def _load() -> tuple[float | None, float | None, float | None]:
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):  # not on this platform
        return None, None, None
    return round(one, 2), round(five, 2), round(fifteen, 2)


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------


class PublishRefused(Exception):
    """The server refused the publication in a way retrying cannot fix (401, 403, 404)."""


class Publisher:
    """`POST /rt/publish` over one keep-alive HTTP/1.1 connection, reopened when it drops.

    `publish` returns the server's answer (`{"offset", "epoch"}`), raises PublishRefused
    for 401/403/404 and OSError (or http.client.HTTPException) for anything else; a failed
    attempt on a connection that had been idle is repeated once on a fresh one, with the same
    idempotency key, so the publication is made at most once.
    """

    def __init__(self, url: str, api_key: str, *, prefix: str = "/rt", timeout: float = 5.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port, not {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.path = prefix.rstrip("/") + "/publish"
        self.api_key = api_key
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def publish(
        self,
        channel: str,
        data: Any,
        idempotency_key: str,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        fields = {"channel": channel, "data": data, "idempotency_key": idempotency_key}
        if tags:
            fields["tags"] = tags  # what the pages' filters match (`?host=` on the page)
        body = json.dumps(fields, separators=(",", ":")).encode()
        try:
            status, answer = self._post(body)
        except (OSError, http.client.HTTPException):
            self.close()  # a stale keep-alive connection, or the server restarted: once more
            status, answer = self._post(body)
        if status == 200:
            return dict(answer)
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        message = f"HTTP {status}: {error.get('message', answer)} (code {error.get('code')})"
        if status in (401, 403, 404):
            raise PublishRefused(message)
        raise OSError(message)

    def _post(self, body: bytes) -> tuple[int, Any]:
        if self._conn is None:
            factory = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._conn = factory(self.host, self.port, timeout=self.timeout)
        self._conn.request(
            "POST",
            self.path,
            body,
            {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        response = self._conn.getresponse()
        raw = response.read()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = raw.decode("utf-8", "replace")
        return response.status, answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def run(
    publisher: Publisher,
    sampler: Sampler,
    *,
    interval: float = 1.0,
    count: int | None = None,
    channel: str = CHANNEL,
    echo: bool = False,
) -> int:
    """Publish a sample every `interval` seconds, `count` times (None: until interrupted).
    Returns how many the server accepted. Raises PublishRefused when the server refuses the
    key or channel. The schedule does not drift: a slow publish shortens the next wait."""
    run_id = secrets.token_hex(4)  # idempotency keys of this run never match another run's
    accepted = 0
    next_at = time.monotonic()
    sent = 0
    while count is None or sent < count:
        sample = sampler.sample()
        sent += 1
        try:
            key = f"{sample['host']}:{run_id}:{sent}"
            tags = {"kind": "machine", "host": sample["host"]}
            position = publisher.publish(channel, sample, key, tags)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("sample %d not published: %s", sample["seq"], exc)
        else:
            accepted += 1
            if echo:
                print(json.dumps({"position": position, "data": sample}), flush=True)
        if count is not None and sent >= count:
            break
        next_at = max(next_at + interval, time.monotonic())
        time.sleep(max(0.0, next_at - time.monotonic()))
    return accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("DASHBOARD_API_KEY", DEV_API_KEY),
        help="the publish API's key (default: $DASHBOARD_API_KEY, else the example's dev key)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--count", type=int, default=None, help="stop after N samples")
    parser.add_argument("--once", action="store_true", help="one sample, then exit")
    parser.add_argument("--host-name", default=None, help="name shown on the page (hostname)")
    parser.add_argument("--print", action="store_true", dest="echo", help="print each sample")
    args = parser.parse_args(argv)
    if args.interval <= 0 or (args.count is not None and args.count < 1):
        parser.error("--interval must be > 0 and --count >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    count = 1 if args.once else args.count
    publisher = Publisher(args.url, args.api_key)
    sampler = Sampler(args.host_name)
    time.sleep(min(args.interval, 0.5))  # so that the first sample has CPU and network rates
    log.info("publishing to %s%s as %r", args.url, publisher.path, sampler.host)
    try:
        accepted = run(publisher, sampler, interval=args.interval, count=count, echo=args.echo)
    except PublishRefused as exc:
        print(f"error: the server refused the publication: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        publisher.close()
    log.info("%d sample(s) accepted", accepted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
