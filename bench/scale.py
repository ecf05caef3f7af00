"""Benchmark rtserve's scale-out: channel fan-out on Redis with one and two workers.

One channel, N subscribers (4,000), the server publishing in a loop as fast as it delivers
(bench/ws_apps/common.py's ``go``: one message per loop iteration, each awaited), then at
steady offered rates. Deliveries/s are counted at the clients by bench/channel_apps/load.py's
raw asyncio client (here through bench/scale_apps/load.py, which knows that with several
workers the control's ``count`` sees one worker only). Cases, one after the other:

- ``memory-1w``: rtserve, memory broker, one worker (``rtserve run ... --workers 1``);
- ``redis-1w``: rtserve, RedisBroker, one worker;
- ``redis-2w-1core``: rtserve, RedisBroker, two workers, both pinned to the server core: the
  cost of splitting the subscribers over two processes, on a layout where the load still has
  its own core;
- ``redis-2w``: rtserve, RedisBroker, two workers, one per core. This machine has two cores:
  the load client has no core of its own and shares the second worker's (see below);
- ``redis-1w-nodelay``: ``redis-1w`` without ``write_delay``;
- ``socketio-redis``: python-socketio (aiohttp, uvloop) with ``AsyncRedisManager``, one process;
- ``cluster-1w``, ``cluster-2w-1core``: ``redis-1w`` and ``redis-2w-1core`` on a Redis
  Cluster (RedisClusterBroker, ``redis+cluster://``): what a second worker costs per delivery
  on the cluster broker (issue 23's goal: at most 1.1x one worker's);
- ``cluster-publish``: no server: bench/cluster_publish.py's publications/s over 1,000
  channels from one process, one Redis vs the three shards (with ``wait=1``, the default,
  and ``wait=0``), the cases alternating over ``--publish-rounds`` rounds, medians; with
  Redis CPU per publication, the figure that carries over to a machine with more cores,
  and the CPU per publication of another process subscribed to every channel (``--receiver``).

The cluster cases run on a private cluster of three masters and three replicas on
127.0.0.1 (tests/redis_support.py's LocalCluster, no persistence) that the benchmark starts
before the first of them and stops at the end; their "Redis" CPU is all six servers'.

The rtserve cases but ``redis-1w-nodelay`` run with ``write_delay`` (``--write-delay``, 0.05 s,
bench/channels.py's ``rtserve-batch``): without it every message is one write per subscriber,
and one core of load client cannot take what one worker sends (bench/channels.py), so no
worker could be measured at its ceiling. Their burst is exactly ``--batch-messages`` messages.

Every rtserve case is ``rtserve run bench.scale_apps.rtserve_app:app --workers N --no-reload``
(with two workers: the supervisor and two worker processes on its socket); the broker and a
key prefix unique to the run come from the environment, and the run's keys are deleted after
each case. The harness (bench/ws.py's and bench/channels.py's helpers) samples every core's
busy and softirq share (/proc/stat) and the CPU time of each server process, the supervisor,
the load client and Redis (/proc/PID/stat; Redis's pid from ``INFO server``).

Valid figures:

- deliveries/s ("throughput valid"): the server core(s) >= 90 % busy, a load core of its own
  < 90 % busy, all messages delivered, and the cores no more than 10 points busier than the
  benchmark's own processes (servers, supervisor, client, Redis) plus softirq time. ``redis-2w``
  never is: with no free core for the load, it measures two workers AND the load on two cores;
  its deliveries/s is a lower bound for two workers on two cores of their own;
- server CPU per delivery ("CPU valid"): all delivered, no other load. It needs no free core,
  so it is measured in every case, and it projects what two workers would do with two cores
  of their own (``2 cores / CPU per delivery``): a projection, not a measurement.

Usage (from anywhere; paths are resolved against the repo root):
    python bench/scale.py                  # 4,000 subscribers, a few minutes
    python bench/scale.py --quick          # 1,000 subscribers, about a minute
    python bench/scale.py --markdown       # the section of docs/benchmarks.md

Needs Redis (``--redis``, default redis://127.0.0.1:6379/0) on this machine (its CPU time is
read from /proc), taskset, and the servers' packages (python-socketio, redis). Traffic goes to
127.0.0.1 only; every phase has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/scale.py`, sys.path[0] is bench/, where http.py would shadow the stdlib.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "bench":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.channel_apps.rtserve_app import API_KEY  # noqa: E402  (after the sys.path fix)
from bench.channels import SoftirqSampler, _rates  # noqa: E402
from bench.http import (  # noqa: E402
    CLK_TCK,
    HOST,
    _cpu_model,
    _git_state,
    _raise_keyboard_interrupt,
    _say,
    _tail,
    _versions,
    free_port,
    read_cpu_times,
    read_proc_ticks,
    stop_process,
    wait_quiet,
    wait_until_listening,
)
from bench.ws import (  # noqa: E402
    SAMPLE_EVERY_S,
    SHARED_CORE_GAP,
    VALID_LOAD_MAX,
    VALID_SERVER_MIN,
    _fmt,
    server_nofile,
    summarize,
)

PACKAGES = ("rtserve", "redis", "hiredis", "python-socketio", "aiohttp", "uvloop")
LOAD_MODULE = "bench.scale_apps.load"
READY_TIMEOUT_S = 30.0
WRITE_DELAY_S = 0.05  # as bench/channels.py's rtserve-batch
GOAL_WORKERS = 1.6  # 2 workers deliver at least 1.6x one worker
GOAL_VS_SOCKETIO = 5.0  # rtserve + Redis delivers at least 5x python-socketio + Redis
WORKER_READY = re.compile(r"worker \d+ \(pid (\d+)\) ready")


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    kind: str  # "rtserve" or "socketio"
    broker: str  # "memory", "redis" or "cluster"
    workers: int = 1
    spread: bool = False  # one worker per core (else every worker on the server core)
    batched: bool = True  # rtserve: write_delay (--write-delay); socketio has no such thing

    def worker_cpus(self, args: argparse.Namespace) -> list[int]:
        if self.spread:
            return [args.server_cpu, args.load_cpu][: self.workers]
        return [args.server_cpu] * self.workers

    @property
    def shares_load_core(self) -> bool:
        return self.spread and self.workers > 1

    def argv(self, args: argparse.Namespace, port: int) -> list[str]:
        if self.kind == "socketio":
            return [
                args.python,
                "-m",
                "bench.scale_apps.socketio_redis_app",
                "--port",
                str(port),
                "--redis",
                args.redis,
                "--channel",
                f"{args.prefix}-sio",
            ]
        return [
            args.python,
            "-m",
            "rtserve.cli.main",
            "run",
            "bench.scale_apps.rtserve_app:app",
            "--workers",
            str(self.workers),
            "--no-reload",
            "--host",
            HOST,
            "--port",
            str(port),
        ]

    def env(self, args: argparse.Namespace) -> dict[str, str]:
        brokers = {"redis": args.redis, "cluster": getattr(args, "cluster_url", "")}
        return {
            "RTBENCH_SCALE_BROKER": brokers.get(self.broker, "memory"),
            "RTBENCH_SCALE_PREFIX": args.prefix,
            "RTBENCH_SCALE_WRITE_DELAY": str(args.write_delay if self.batched else 0.0),
        }


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "memory-1w",
            "rtserve, memory broker, 1 worker on cpu{server}",
            "rtserve",
            "memory",
        ),
        Case(
            "redis-1w",
            "rtserve, RedisBroker, 1 worker on cpu{server}",
            "rtserve",
            "redis",
        ),
        Case(
            "redis-2w-1core",
            "rtserve, RedisBroker, 2 workers, both on cpu{server}",
            "rtserve",
            "redis",
            workers=2,
        ),
        Case(
            "redis-2w",
            "rtserve, RedisBroker, 2 workers on cpu{server} and cpu{load} (the load shares "
            "cpu{load})",
            "rtserve",
            "redis",
            workers=2,
            spread=True,
        ),
        Case(
            "redis-1w-nodelay",
            "rtserve, RedisBroker, 1 worker on cpu{server}, no write delay",
            "rtserve",
            "redis",
            batched=False,
        ),
        Case(
            "socketio-redis",
            "python-socketio + AsyncRedisManager (aiohttp, uvloop), 1 process on cpu{server}",
            "socketio",
            "redis",
            batched=False,
        ),
        Case(
            "cluster-1w",
            "rtserve, RedisClusterBroker (3 shards), 1 worker on cpu{server}",
            "rtserve",
            "cluster",
        ),
        Case(
            "cluster-2w-1core",
            "rtserve, RedisClusterBroker (3 shards), 2 workers, both on cpu{server}",
            "rtserve",
            "cluster",
            workers=2,
        ),
        Case(
            "cluster-publish",
            "publications/s over 1,000 channels from one process: one Redis vs 3 shards",
            "publish",
            "cluster",
        ),
    )
}
DEFAULT_CASES = list(CASES)
GOAL_CLUSTER_WORKERS = 1.1  # 2 workers cost at most 1.1x one worker's CPU per delivery


def describe(case: Case, args: argparse.Namespace) -> str:
    text = case.description.format(server=args.server_cpu, load=args.load_cpu)
    if case.kind == "rtserve" and case.batched:
        text += f", `write_delay={args.write_delay:g}`"
    return text


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def redis_client(url: str) -> Any:
    import redis  # the servers need it anyway; imported only here

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def redis_info(url: str) -> dict[str, Any]:
    client = redis_client(url)
    try:
        info = client.info("server")
        return {"pid": int(info["process_id"]), "version": str(info["redis_version"])}
    finally:
        client.close()


def delete_keys(url: str, prefix: str) -> int:
    """Delete every key of the run's prefix; how many there were."""
    client = redis_client(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        keys += list(client.scan_iter(match=f"{prefix}-*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Processes and CPU sampling
# --------------------------------------------------------------------------------------------


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` onto `cpu` (threads started later inherit it)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {cpu})


def socket_count(pid: int) -> int | None:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY_S: each core's (total, busy, softirq) jiffies and each watched
    process's CPU ticks, by role (``server`` pids are the workers, in order)."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.roles = roles
        self.samples: list[tuple[float, dict[int, tuple[int, int, int]], dict[int, int]]] = []
        self.stopping = threading.Event()

    def add(self, role: str, pid: int) -> None:
        self.roles.setdefault(role, []).append(pid)

    def take(self) -> None:
        busy, soft = read_cpu_times(), SoftirqSampler.read()
        cpus = {c: (total, b, soft.get(c, (0, 0))[1]) for c, (total, b) in busy.items()}
        ticks: dict[int, int] = {}
        for pids in list(self.roles.values()):
            for pid in pids:
                t = read_proc_ticks(pid)
                if t is not None:
                    ticks[pid] = t
        self.samples.append((time.monotonic(), cpus, ticks))

    def run(self) -> None:
        while not self.stopping.is_set():
            self.take()
            self.stopping.wait(SAMPLE_EVERY_S)

    def wait_past(self, t: float, timeout: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.samples and self.samples[-1][0] > t):
            time.sleep(0.02)

    def window(self, t0: float, t1: float, cpus: Sequence[int]) -> dict[str, Any]:
        samples = list(self.samples)
        inside = [s for s in samples if t0 <= s[0] <= t1]
        if len(inside) >= 2 and inside[-1][0] - inside[0][0] >= 0.5 * (t1 - t0):
            a, b = inside[0], inside[-1]
        else:
            before = [s for s in samples if s[0] <= t0]
            after = [s for s in samples if s[0] >= t1]
            if not before or not after:
                return {}
            a, b = before[-1], after[0]
        seconds = b[0] - a[0]
        if seconds <= 0:
            return {}

        def core(cpu: int, i: int) -> float:
            total = b[1][cpu][0] - a[1][cpu][0]
            return 100.0 * (b[1][cpu][i] - a[1][cpu][i]) / total if total > 0 else 0.0

        def secs(pid: int) -> float | None:
            x, y = a[2].get(pid), b[2].get(pid)
            return None if x is None or y is None else (y - x) / CLK_TCK

        out: dict[str, Any] = {"cpu_seconds": seconds}
        out["core_pct"] = {str(c): core(c, 1) for c in cpus}
        out["softirq_pct"] = {str(c): core(c, 2) for c in cpus}
        for role, pids in self.roles.items():
            each = [secs(pid) for pid in pids]
            known = [x for x in each if x is not None]
            out[f"{role}_cpu_s"] = sum(known) if known else None
            if role == "server":
                out["worker_cpu_s"] = each
        return out


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    workers: list[int]  # the processes that serve (the supervisor's workers, or proc itself)


def start_server(args: argparse.Namespace, case: Case, port: int, log: Any) -> Running | str:
    cmd = ["taskset", "-c", str(args.server_cpu), *case.argv(args, port)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            **case.env(args),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    )
    running = Running(proc, [proc.pid])
    error = wait_until_listening(proc, port, READY_TIMEOUT_S)
    if error:
        return f"{error}; {_tail(Path(log.name))}"
    if case.workers > 1:  # the supervisor listens at once: wait for its workers' "ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            log.flush()
            pids = [int(m) for m in WORKER_READY.findall(Path(log.name).read_text())]
            if len(pids) >= case.workers:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(running)
                return f"{case.workers} workers not ready; {_tail(Path(log.name))}"
            time.sleep(0.1)
        running.workers = pids[: case.workers]
        for pid, cpu in zip(running.workers, case.worker_cpus(args), strict=True):
            pin(pid, cpu)
    return running


def stop_server(running: Running) -> list[str]:
    """SIGTERM the server (a supervisor drains its workers); a worker left behind is killed by
    its pid. What did not go as planned."""
    problems: list[str] = []
    stop_process(running.proc, grace_s=15.0)
    for pid in running.workers:
        if pid == running.proc.pid:
            continue
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        cmdline = ""
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if "reload_worker" in cmdline:
            problems.append(f"worker {pid} still running 10 s after the supervisor; killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return problems


def plan_for(args: argparse.Namespace, case: Case) -> list[dict[str, Any]]:
    return [
        {
            "phase": "channel",
            "protocol": "sio" if case.kind == "socketio" else "rt",
            "api_key": API_KEY,
            "workers": case.workers,
            "subscribers": args.subscribers,
            "sources": ["server"],
            "messages": args.messages,
            "burst_seconds": args.burst_seconds,
            # Under write_delay a probe is latency-bound and misjudges the rate: a burst of
            # exactly --batch-messages (as bench/channels.py's batched servers).
            "burst_messages": args.batch_messages
            if case.batched and case.kind == "rtserve"
            else None,
            "rates": args.rates,
            "sustained_seconds": args.sustained_seconds,
            "min_sustained_messages": args.min_sustained_messages,
            "data_size": args.data_size,
        }
    ]


def run_case(args: argparse.Namespace, case: Case) -> list[dict[str, Any]]:
    wait_quiet(args)
    if case.kind == "publish":
        return run_publish(args)
    rows: list[dict[str, Any]] = []
    with tempfile.NamedTemporaryFile(prefix=f"bench-scale-{case.name}-", suffix=".log") as log:
        port = free_port()
        started = start_server(args, case, port, log)
        if isinstance(started, str):
            _say(f"  {case.name}: failed to start ({started})")
            return [{"phase": "session", "error": f"failed to start: {started}"}]
        running = started
        try:
            rows = drive(args, case, running, port, log)
        finally:
            problems = stop_server(running)
            log.flush()
            text = Path(log.name).read_text(errors="replace")
            rows += [{"phase": "session", "error": p} for p in problems]
            alarming = [
                line
                for line in text.splitlines()
                if re.search(r"Traceback|ERROR|CRITICAL|exited|restart|crash", line)
            ]
            if alarming:
                rows.append({"phase": "server_log", "lines": alarming[:10]})
                _say(f"  {case.name}: server log: " + " | ".join(alarming[:5]))
    return rows


def run_publish(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``cluster-publish`` case: bench/cluster_publish.py's rounds on the run's cluster."""
    import bench.cluster_publish as cluster_publish

    options = argparse.Namespace(
        seconds=args.publish_seconds,
        channels=1000,
        concurrency=64,
        rounds=args.publish_rounds,
        receiver=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-redis-") as tmp:
        rows = cluster_publish.run_rounds(options, args.cluster, Path(tmp))
    flush_cluster(args)
    return [
        {"phase": "publish", "table": cluster_publish.table(options, rows), "cases": rows},
    ]


def start_cluster(args: argparse.Namespace) -> None:
    """The private Redis Cluster of the cluster cases (args.cluster, cluster_url, _pids)."""
    from tests.redis_support import LocalCluster

    directory = Path(tempfile.mkdtemp(prefix="bench-scale-cluster-"))
    cluster = LocalCluster(directory)
    cluster.start()
    args.cluster, args.cluster_dir = cluster, directory
    args.cluster_url = cluster.url
    args.cluster_pids = [p.pid for p in cluster.processes.values()]


def stop_cluster(args: argparse.Namespace) -> None:
    cluster = getattr(args, "cluster", None)
    if cluster is not None:
        cluster.stop()
        shutil.rmtree(args.cluster_dir, ignore_errors=True)
        args.cluster = None


def flush_cluster(args: argparse.Namespace) -> None:
    """Empty the cluster's masters (the next case starts from no keys)."""
    for port in args.cluster.ports:
        client = redis_client(f"redis://127.0.0.1:{port}/0")
        try:
            with contextlib.suppress(Exception):  # a replica refuses: it follows its master
                client.flushall()
        finally:
            client.close()


def drive(
    args: argparse.Namespace, case: Case, running: Running, port: int, log: Any
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    baseline = {pid: socket_count(pid) or 0 for pid in running.workers}
    redis_pids = args.cluster_pids if case.broker == "cluster" else [args.redis_pid]
    roles: dict[str, list[int]] = {"server": list(running.workers), "redis": redis_pids}
    if running.workers != [running.proc.pid]:
        roles["supervisor"] = [running.proc.pid]
    sampler = Sampler(roles)
    sampler.start()
    nofile = server_nofile(running.workers[0])
    _say(
        f"  {case.name}: listening on {HOST}:{port} (pids {running.workers}, open-files "
        f"limit {nofile})"
    )
    cmd = [
        "taskset",
        "-c",
        str(args.load_cpu),
        args.python,
        "-m",
        LOAD_MODULE,
        "--port",
        str(port),
        "--server-pid",
        str(running.workers[0]),
        "--plan",
        json.dumps(plan_for(args, case)),
    ]
    client = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler.add("client", client.pid)
    watchdog = threading.Timer(args.session_timeout, stop_process, (client, 2.0))
    watchdog.start()
    cpus = sorted({args.server_cpu, args.load_cpu})
    try:
        assert client.stdout is not None
        for line in client.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            window = record.get("window")
            if window:
                sampler.wait_past(window[1])
                record.update(sampler.window(window[0], window[1], cpus))
            if record.get("phase") == "burst":
                record["per_worker_connections"] = [
                    (socket_count(pid) or 0) - baseline[pid] for pid in running.workers
                ]
            annotate(args, case, record)
            rows.append(record)
            _say("  " + summarize(case.name, record))
        client.wait(timeout=30)
        if client.returncode:
            rows.append({"phase": "session", "error": f"load client exited {client.returncode}"})
        for pid in running.workers:
            if not Path(f"/proc/{pid}").exists() or parent_of(pid) is None:
                rows.append({"phase": "session", "error": f"server process {pid} is gone"})
    finally:
        watchdog.cancel()
        stop_process(client, grace_s=2.0)
        sampler.stopping.set()
        sampler.join(timeout=2)
    return rows


def annotate(args: argparse.Namespace, case: Case, r: dict[str, Any]) -> None:
    """CPU shares, CPU per delivery and validity of one burst or sustained row."""
    if "cpu_seconds" not in r:
        return
    seconds = r["cpu_seconds"]
    server_s = (r.get("server_cpu_s") or 0.0) + (r.get("supervisor_cpu_s") or 0.0)
    client_s, redis_s = r.get("client_cpu_s"), r.get("redis_cpu_s")
    cores = r["core_pct"]
    soft = r["softirq_pct"]
    s, ld = str(args.server_cpu), str(args.load_cpu)
    r["server_core_pct"], r["load_core_pct"] = cores.get(s), cores.get(ld)
    r["server_proc_pct"] = 100 * server_s / seconds
    r["client_proc_pct"] = None if client_s is None else 100 * client_s / seconds
    r["redis_proc_pct"] = None if redis_s is None else 100 * redis_s / seconds
    r["workers_proc_pct"] = [None if x is None else 100 * x / seconds for x in r["worker_cpu_s"]]
    delivered = r.get("delivered")
    if delivered:
        r["server_us_per_delivery"] = server_s / delivered * 1e6
        if redis_s is not None:
            r["redis_us_per_delivery"] = redis_s / delivered * 1e6
    # What the cores did that none of the benchmark's processes (nor the kernel's softirq
    # work, mostly this loopback traffic) account for.
    own = sum(x or 0.0 for x in (server_s, client_s, redis_s)) / seconds * 100
    busy = sum(cores.values()) + 0.0
    r["other_pct"] = busy - own - sum(soft.values())
    cpu_reasons: list[str] = []
    if r["other_pct"] > SHARED_CORE_GAP:
        cpu_reasons.append(
            f"other load: the cores were {r['other_pct']:.0f} points busier than the "
            "benchmark's processes and softirq"
        )
    if r.get("complete") is False:
        cpu_reasons.append(f"only {r['delivered']:,} of {r['expected']:,} delivered in time")
    reasons = list(cpu_reasons)
    if case.shares_load_core:
        reasons.append(f"no free core for the load: it shares cpu{args.load_cpu} with a worker")
    else:
        if (r["server_core_pct"] or 0) < VALID_SERVER_MIN:
            reasons.append(f"server core {r['server_core_pct']:.0f} % < {VALID_SERVER_MIN:.0f} %")
        if (r["load_core_pct"] or 0) >= VALID_LOAD_MAX:
            reasons.append(
                f"load core {r['load_core_pct']:.0f} % >= {VALID_LOAD_MAX:.0f} %: a lower bound"
            )
    r["cpu_valid"], r["cpu_invalid_reasons"] = not cpu_reasons, cpu_reasons
    r["valid"], r["invalid_reasons"] = not reasons, reasons


def disturbed(rows: list[dict[str, Any]]) -> float:
    """How much other load the burst saw (points over SHARED_CORE_GAP; 0: none)."""
    for r in rows:
        if r.get("phase") == "burst" and "other_pct" in r:
            return max(0.0, r["other_pct"] - SHARED_CORE_GAP)
    return 0.0


def run_with_retries(args: argparse.Namespace, case: Case) -> list[dict[str, Any]]:
    best: list[dict[str, Any]] = []
    for attempt in range(args.retries + 1):
        rows = run_case(args, case)
        if case.broker == "cluster":
            flush_cluster(args)
        try:
            removed = delete_keys(args.redis, args.prefix)
        except Exception as exc:  # reported, not fatal
            rows.append({"phase": "session", "error": f"deleting the run's keys failed: {exc}"})
        else:
            if removed:
                _say(f"  {case.name}: deleted {removed} Redis key(s) of prefix {args.prefix}")
        for r in rows:
            r["attempt"] = attempt + 1
        if not best or disturbed(rows) < disturbed(best):
            best = rows  # the least disturbed attempt
        if not disturbed(best) or attempt == args.retries:
            break
        _say(f"  {case.name}: another program shared a core; measuring again")
    return best


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

Results = dict[str, list[dict[str, Any]]]


def _burst(results: Results, name: str) -> dict[str, Any]:
    for r in results.get(name, []):
        if r.get("phase") == "burst" and "error" not in r:
            return r
    return {}


def _cell(ok: bool | None, reasons: list[str]) -> str:
    return "yes" if ok else "**no**: " + "; ".join(reasons)


def _pcts(values: list[float | None] | None) -> str:
    return " + ".join(_fmt(v, 0) for v in values or []) or "-"


def render(args: argparse.Namespace, results: Results) -> str:
    out: list[str] = []
    if args.markdown:
        out += header_lines(args)
    base = _burst(results, "redis-1w")
    out += [
        f"### Fan-out burst: {args.subscribers:,} subscribers of one channel, the server "
        "publishing in a loop",
        "",
        "Deliveries/s over all subscribers (first send to last delivery). CPU: each process's "
        "share of one core over the burst (workers listed one by one; the supervisor's is "
        "added to the server's CPU per delivery). Redis: its CPU share and its CPU time per "
        "delivery. Subscribers per worker: the sockets each worker held during the burst.",
        "",
        "| case | deliveries/s | vs redis-1w | server CPU us/delivery | Redis us/delivery "
        "| subscribers per worker | worker proc % | Redis % | load proc % | core % (cpu"
        f"{args.server_cpu} / cpu{args.load_cpu}) | throughput valid | CPU valid |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name in args.cases:
        r = _burst(results, name)
        if CASES[name].kind == "publish":
            continue
        if not r:
            out.append(f"| {name} | {_status(results, name)} | | | | | | | | | no | no |")
            continue
        ratio = "-"
        if base.get("deliveries_per_s") and r.get("deliveries_per_s"):
            ratio = f"{r['deliveries_per_s'] / base['deliveries_per_s']:.2f}x"
        cores = r.get("core_pct", {})
        per_worker = " / ".join(f"{n:,}" for n in r.get("per_worker_connections", []))
        out.append(
            f"| {name} | {_fmt(r.get('deliveries_per_s'), 0, True)} | {ratio} "
            f"| {_fmt(r.get('server_us_per_delivery'), 2)} "
            f"| {_fmt(r.get('redis_us_per_delivery'), 3)} | {per_worker} "
            f"| {_pcts(r.get('workers_proc_pct'))} | {_fmt(r.get('redis_proc_pct'), 0)} "
            f"| {_fmt(r.get('client_proc_pct'), 0)} "
            f"| {_fmt(cores.get(str(args.server_cpu)), 0)} / "
            f"{_fmt(cores.get(str(args.load_cpu)), 0)} "
            f"| {_cell(r.get('valid'), r.get('invalid_reasons', []))} "
            f"| {_cell(r.get('cpu_valid'), r.get('cpu_invalid_reasons', []))} |"
        )
    out.append("")
    out += [
        f"### Steady offered rates: {args.subscribers:,} subscribers",
        "",
        "Latency per message: from the server's send stamp to the LAST subscriber receiving it. "
        "A rate above 90 % of the burst's deliveries/s is not offered.",
        "",
        "| case | msg/s | offered deliveries/s | kept up | p50 (ms) | p99 (ms) | max (ms) "
        "| server CPU us/delivery | Redis % | CPU valid |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in args.cases:
        for r in results.get(name, []):
            if r.get("phase") == "skipped":
                out.append(
                    f"| {name} | {r['rate_hz']} | {r['rate_hz'] * r['subscribers']:,} "
                    f"| not offered: {r['skipped']} | | | | | | |"
                )
            if r.get("phase") != "sustained" or "error" in r:
                continue
            kept = "yes" if r["complete"] else f"**no** ({r['delivered']:,}/{r['expected']:,})"
            out.append(
                f"| {name} | {r['rate_hz']} | {r['rate_hz'] * r['subscribers']:,} | {kept} "
                f"| {_fmt(r.get('latency_p50_ms'), 2)} | {_fmt(r.get('latency_p99_ms'), 2)} "
                f"| {_fmt(r.get('latency_max_ms'), 2)} "
                f"| {_fmt(r.get('server_us_per_delivery'), 2)} "
                f"| {_fmt(r.get('redis_proc_pct'), 1)} "
                f"| {_cell(r.get('cpu_valid'), r.get('cpu_invalid_reasons', []))} |"
            )
    out.append("")
    for name in args.cases:
        for r in [r for r in results.get(name, []) if r.get("phase") == "publish"][:1]:
            out += ["### Publishing over 1,000 channels: one Redis vs three shards", ""]
            out += [*r["table"], ""]
    out += render_goals(args, results)
    problems = [
        f"- {name}: {r['phase']}: {r.get('error') or r.get('errors') or r.get('lines')}"
        for name in args.cases
        for r in results.get(name, [])
        if "error" in r or r.get("phase") in ("client_errors", "session", "server_log")
    ]
    if problems:
        out += ["### Errors and server log lines", "", *problems, ""]
    return "\n".join(out)


def _status(results: Results, name: str) -> str:
    for r in results.get(name, []):
        if "error" in r:
            return f"error: {r['error']}"
    return "no result"


def render_goals(args: argparse.Namespace, results: Results) -> list[str]:
    out = ["### Goals (issue 8)", ""]
    one, two = _burst(results, "redis-2w-1core"), _burst(results, "redis-2w")
    base, mem = _burst(results, "redis-1w"), _burst(results, "memory-1w")
    sio = _burst(results, "socketio-redis")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**NOT met**"

    b_rate, b_us = base.get("deliveries_per_s"), base.get("server_us_per_delivery")
    if b_rate and mem.get("deliveries_per_s"):
        out.append(
            f"- Redis vs memory broker, one worker: {b_rate:,.0f} vs "
            f"{mem['deliveries_per_s']:,.0f} deliveries/s "
            f"({b_rate / mem['deliveries_per_s']:.2f}x), server CPU per delivery "
            f"{_fmt(b_us, 2)} vs {_fmt(mem.get('server_us_per_delivery'), 2)} us"
            + ("" if base.get("valid") and mem.get("valid") else " (a row involved is invalid)")
        )
    # Goal 1: two workers >= 1.6x one worker.
    line = f"- 2 workers >= {GOAL_WORKERS:g}x one worker (Redis): "
    parts: list[str] = []
    if two.get("deliveries_per_s") and b_rate:
        parts.append(
            f"measured with the load sharing cpu{args.load_cpu} with the second worker: "
            f"{two['deliveries_per_s']:,.0f} vs {b_rate:,.0f} deliveries/s = "
            f"{two['deliveries_per_s'] / b_rate:.2f}x, NOT a valid measure of the goal (the two "
            "workers had less than two cores: a lower bound)"
        )
    if one.get("deliveries_per_s") and b_rate:
        note = "" if one.get("valid") and base.get("valid") else " (a row involved is invalid)"
        parts.append(
            f"both workers on one core (what splitting the subscribers over two processes "
            f"costs): {one['deliveries_per_s'] / b_rate:.2f}x one worker on that core{note}"
        )
    u2 = two.get("server_us_per_delivery")
    if u2 and b_us and b_rate:
        ok = bool(two.get("cpu_valid") and base.get("cpu_valid") and base.get("valid"))
        projected = 2e6 / u2
        parts.append(
            f"projected from CPU per delivery ({b_us:.2f} us with one worker, {u2:.2f} us with "
            f"two): two workers with two cores of their own would deliver about "
            f"{projected:,.0f}/s = {projected / b_rate:.2f}x the measured one worker"
            + ("" if ok else " (a row involved is invalid)")
            + f"; by projection {verdict(projected / b_rate >= GOAL_WORKERS)}, not measured"
        )
    out.append(line + ("; ".join(parts) if parts else "no result") + ".")
    out.append(
        f"  Unmeasurable here: {os.cpu_count()} cores hold either two workers or one worker "
        "and the load client, not both; measuring it needs a third core (or a second machine) "
        "for the load, and Redis's own share (listed) on top."
    )
    # Goal 2: >= 5x python-socketio + Redis, one process each, same layout.
    s_rate, s_us = sio.get("deliveries_per_s"), sio.get("server_us_per_delivery")
    for name, how in (
        ("redis-1w-nodelay", "no write delay: one write per subscriber per message, as Socket.IO"),
        ("redis-1w", f"`write_delay={args.write_delay:g}`"),
    ):
        r = _burst(results, name)
        rate, us = r.get("deliveries_per_s"), r.get("server_us_per_delivery")
        if not rate or not s_rate:
            continue
        ratio = rate / s_rate
        note = ""
        if not (r.get("valid") and sio.get("valid")):
            only_load = all(x.startswith("load core") for x in r.get("invalid_reasons", []))
            note = (
                " (rtserve's row is client-bound: a lower bound)"
                if sio.get("valid") and only_load
                else " (a row involved is invalid)"
            )
        cpu = (
            f"; server CPU per delivery {us:.2f} vs {s_us:.2f} us = {s_us / us:.1f}x"
            if us and s_us
            else ""
        )
        out.append(
            f"- rtserve + Redis, one worker, {how} (`{name}`) >= {GOAL_VS_SOCKETIO:g}x "
            f"python-socketio + Redis (one process), burst deliveries/s: {rate:,.0f} vs "
            f"{s_rate:,.0f} = {ratio:.1f}x; {verdict(ratio >= GOAL_VS_SOCKETIO)}{note}{cpu}"
        )
    out += render_cluster_goal(results)
    return [*out, ""]


def _burst_us(results: Results, name: str) -> list[float]:
    """Server CPU us per delivery of every round's burst of case `name`."""
    return [
        r["server_us_per_delivery"]
        for r in results.get(name, [])
        if r.get("phase") == "burst" and r.get("server_us_per_delivery")
    ]


def render_cluster_goal(results: Results) -> list[str]:
    """Issue 23: on the cluster broker two workers cost <= 1.1x one's CPU per delivery
    (medians over the rounds; CPU time per delivery is what other load distorts least)."""
    ones, twos = _burst_us(results, "cluster-1w"), _burst_us(results, "cluster-2w-1core")
    if not (ones and twos):
        return []
    u1, u2 = statistics.median(ones), statistics.median(twos)
    valid = all(
        r.get("cpu_valid")
        for name in ("cluster-1w", "cluster-2w-1core")
        for r in results.get(name, [])
        if r.get("phase") == "burst"
    )
    rounds = ", ".join(f"{b:.2f}/{a:.2f}" for a, b in zip(ones, twos, strict=False))
    return [
        f"- Cluster broker, 2 workers (both on one core) vs 1, server CPU per delivery "
        f"(median of {len(ones)} round(s); per round 2w/1w: {rounds}): {u2:.2f} vs {u1:.2f} us "
        f"= {u2 / u1:.2f}x; <= {GOAL_CLUSTER_WORKERS:g}x "
        + ("met" if u2 / u1 <= GOAL_CLUSTER_WORKERS else "**NOT met**")
        + ("" if valid else " (rounds not CPU-valid: other load on the machine)")
    ]


def header_lines(args: argparse.Namespace) -> list[str]:
    command = ("python bench/scale.py " + " ".join(args.argv_used)).strip()
    cases = "; ".join(f"`{n}`: {describe(CASES[n], args)}" for n in args.cases)
    redis_cpus = ",".join(str(c) for c in sorted(args.redis_affinity))
    return [
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.release()}, open-files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
        f"; the load client (one process, uvloop, raw frames) pinned to cpu{args.load_cpu}; "
        f"Redis {args.redis_version} (pid {args.redis_pid}) is this machine's, not pinned by "
        f"the benchmark (allowed cpus {redis_cpus}), its CPU time read from /proc",
        f"- Software: {_versions(args.python, PACKAGES)}; rtserve at commit {args.git_state}",
        f"- Cases: {cases}. rtserve cases: `rtserve run bench.scale_apps.rtserve_app:app "
        "--workers N --no-reload` (N = 2: the supervisor's socket shared by two worker "
        "processes, each pinned by the harness); `RedisBroker(url, prefix=<unique per run>)`, "
        "keys deleted after each case",
        f"- Publisher: the server loop (`await app.publish(...)` / `await sio.emit(..., "
        "room=...)`, one message per loop iteration, on the worker holding the control "
        f"connection); each message's data is {args.data_size} bytes. The rtserve cases but "
        f"`redis-1w-nodelay` hold a connection's frames `write_delay={args.write_delay:g}` s "
        "and write them together (without it, one core of load client cannot take what one "
        "worker sends: bench/channels.py), their burst is exactly "
        f"{args.batch_messages:,} messages. No compression, no keepalive pings",
        f"- Valid: throughput: the server core(s) >= {VALID_SERVER_MIN:.0f} % busy, a load core "
        f"of its own < {VALID_LOAD_MAX:.0f} % busy, every message delivered, the cores at most "
        f"{SHARED_CORE_GAP:.0f} points busier than the benchmark's processes (servers, "
        "supervisor, client, Redis) and softirq; CPU per delivery: every message delivered, no "
        "other load",
        "",
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "subscribers": 4000,
    "messages": 1000,
    "batch_messages": 1000,
    "burst_seconds": 3.0,
    "rates": [10, 50],
    "sustained_seconds": 5.0,
    "min_sustained_messages": 10,
}
QUICK: dict[str, Any] = {
    "subscribers": 1000,
    "messages": 200,
    "batch_messages": 300,
    "burst_seconds": 1.0,
    "rates": [10],
    "sustained_seconds": 1.0,
    "min_sustained_messages": 5,
}


def _cases(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(CASES)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark rtserve's channel fan-out on Redis with one and two workers, "
        "against the memory broker and python-socketio's Redis manager."
    )
    parser.add_argument(
        "--cases",
        type=_cases,
        default=DEFAULT_CASES,
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument("--subscribers", type=int, help="subscribers of the channel (4000)")
    parser.add_argument("--messages", type=int, help="largest burst (1000)")
    parser.add_argument("--burst-seconds", type=float, help="target burst length (3)")
    parser.add_argument(
        "--batch-messages", type=int, help="the burst of the write_delay cases, exactly (1000)"
    )
    parser.add_argument(
        "--write-delay",
        type=float,
        default=WRITE_DELAY_S,
        help=f"write_delay of the rtserve cases but redis-1w-nodelay (default {WRITE_DELAY_S})",
    )
    parser.add_argument("--rates", type=_rates, help="offered msg/s, comma-separated (10,50)")
    parser.add_argument("--sustained-seconds", type=float, help="per rate (5)")
    parser.add_argument("--min-sustained-messages", type=int, help="per rate, at least (10)")
    parser.add_argument("--data-size", type=int, default=40, help="bytes of each message's data")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke test")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a docs-ready section")
    parser.add_argument("--python", default=sys.executable, help="runs servers and the client")
    parser.add_argument("--retries", type=int, default=1, help="re-run a disturbed case")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait for idle cores")
    parser.add_argument("--session-timeout", type=float, default=300.0, help="per case")
    parser.add_argument(
        "--publish-seconds", type=float, default=3.0, help="cluster-publish: per case and round"
    )
    parser.add_argument(
        "--publish-rounds", type=int, default=3, help="cluster-publish: alternating rounds"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the cases in turn this many times (tables: the first round; the cluster "
        "goal: medians)",
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args(argv)
    args.argv_used = list(sys.argv[1:] if argv is None else argv)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
    if args.server_cpu == args.load_cpu:
        parser.error("--server-cpu and --load-cpu must differ")
    if urlsplit(args.redis).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--redis must be on this machine (its CPU time is read from /proc)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("taskset") is None:
        print("error: taskset not found on PATH (util-linux)", file=sys.stderr)
        return 2
    cpus = read_cpu_times()
    if args.server_cpu not in cpus or args.load_cpu not in cpus:
        print(f"error: cpus {sorted(cpus)} available; need two distinct ones", file=sys.stderr)
        return 2
    try:
        info = redis_info(args.redis)
    except Exception as exc:  # any failure to reach Redis ends the run
        print(f"error: cannot reach Redis at {args.redis}: {exc}", file=sys.stderr)
        return 2
    args.redis_pid, args.redis_version = info["pid"], info["version"]
    try:
        args.redis_affinity = os.sched_getaffinity(args.redis_pid)
    except OSError:
        args.redis_affinity = set()
    args.prefix = f"rtbench-scale-{os.getpid()}-{secrets.token_hex(3)}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the servers and the client inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.subscribers + 64:
        _say(f"warning: open-files limit {hard} < {args.subscribers + 64} subscribers")
    args.git_state = _git_state()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    _say(
        f"benchmarking {', '.join(args.cases)}: {args.subscribers} subscribers, bursts up to "
        f"{args.messages} messages, rates {args.rates} msg/s; Redis pid {args.redis_pid}, key "
        f"prefix {args.prefix}"
    )
    started = time.monotonic()
    results: Results = {}
    try:
        if any(CASES[name].broker == "cluster" for name in args.cases):
            start_cluster(args)
            _say(f"Redis Cluster (3 masters, 3 replicas) at {args.cluster_url}")
        for turn in range(args.rounds):  # the cases take turns: other load falls on all alike
            for name in args.cases:
                rows = run_with_retries(args, CASES[name])
                for row in rows:
                    row["round"] = turn + 1
                results.setdefault(name, []).extend(rows)
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130
    finally:
        stop_cluster(args)
        with contextlib.suppress(Exception):
            delete_keys(args.redis, args.prefix)
    _say(f"done in {time.monotonic() - started:.0f} s")
    print(render(args, results))
    if args.json:
        settings = {k: getattr(args, k) for k in (*DEFAULTS, "data_size", "redis", "prefix")}
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": ["python", "bench/scale.py", *args.argv_used],
            "settings": settings,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        _say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
