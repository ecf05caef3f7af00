"""`rtserve run` with reload or several workers: a supervisor that never leaves you stranded.

The supervisor (the `rtserve run` process) binds the listening socket(s) once and serves
through worker subprocesses that inherit them (with several workers on Linux, each listens on
its own SO_REUSEPORT socket on the same port instead: see listening.py), so the port never
goes away. With `--workers N` there are N slots, each with one current worker; the rest of
this describes one slot, and a reload (a change, or SIGHUP) replaces the slots one by one.
With reload on it watches the project folder (.py, .yaml/.yml, .env and the files of static
routes). On a change it starts a NEW worker on the same sockets; only when that one has
loaded the project and is accepting does the old one get SIGTERM. With the memory broker the
channels go along (see reload_state.py): the new worker, once it has loaded the project, says
so; the old one freezes its broker and writes its state to a file; the new one reads it, then
serves. A worker that starts with no predecessor (the first, or after a crash) starts empty.
A new worker that fails first (a config error, a SyntaxError or ImportError in a handler
module, ...) is reported in a few lines and the old one keeps serving until a later save
fixes things; with no old one (at start, after a crash) it answers every request with a 503
and the error instead. A worker that exits on its own is started again, with a short,
bounded backoff.

How they talk:

- the worker is `python -m rtserve.cli.reload_worker`, with a JSON spec in the environment
  variable RTSERVE_RELOAD_WORKER: the target, `run`'s options, the inherited listening
  descriptors (`fds`) or the addresses to listen on again (`listen_again`), its slot and the
  number of workers, the write end of a pipe (`ready_fd`), the read end of another
  (`control_fd`), the read end of the lifeline (`lifeline_fd`) and the reload grace;
- on `ready_fd` the worker writes `ready` once it accepts connections, or `error <json list
  of lines>` (the compact error) and exits 2, or `fatal <json list>` when no worker could
  serve (the broker is unreachable): the supervisor then stops, with status 2. Before
  `ready`, a worker with a memory broker writes `loaded` and waits on `control_fd` for
  `import <path>` (the previous worker's channels) or `fresh`. A serving worker takes
  `export <path>` (answered on `ready_fd` with `exported ok <path>` or `exported none
  <path>`) and `thaw`. With `error_page` in the spec (nothing else serves in its slot), a
  worker that cannot start says `error` and answers every request with a 503 and the error
  until it is retired;
- SIGTERM retires a worker: it stops accepting, closes WebSockets with 1012 (service
  restart) and gives in-flight requests `grace` seconds. SIGINT stops it for good: 1001 and
  the project's `timeouts.graceful` (a second SIGINT closes everything at once). The end of
  the lifeline (the supervisor is gone, even killed) stops it like SIGINT.

Workers run in their own process group: Ctrl-C reaches the supervisor only, which stops the
worker itself, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from rtserve.cli.listening import admin_config, bind, listen_key, listen_settings
from rtserve.cli.options import apply_options
from rtserve.cli.reload_banner import show_banner, url_lines
from rtserve.cli.reload_errors import plain_error
from rtserve.cli.watch import ProjectFilter, changed_suffix, relative
from rtserve.server.listener import listen_failure, listen_urls
from rtserve.server.settings import ServerSettings

log = logging.getLogger("rtserve.server")

SPEC_ENV = "RTSERVE_RELOAD_WORKER"
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # after a worker exits on its own; then give up
STABLE_AFTER = 10.0  # a worker up this long before it exits does not count as a crash loop
KILL_MARGIN = 5.0  # seconds past a worker's grace before it is killed
HANDOVER_TIMEOUT = 10.0  # seconds an old worker has to export its channels


# --- the supervisor ------------------------------------------------------------------------


def supervise(
    target: str | None,
    project: str | None,
    options: Mapping[str, Any],
    *,
    watch: bool = True,
    poll: bool = False,
    grace: float = 2.0,
) -> int:
    """Serve TARGET/project through worker processes until SIGINT/SIGTERM (reloading on
    changes when `watch`); the exit status."""
    sys.dont_write_bytecode = True  # see _worker_main
    if project is not None:
        from rtserve.config.project import find_config

        config_file = find_config(project)
        if not config_file.exists():
            click.echo(f"error: no {config_file.name} in {config_file.parent}", err=True)
            return 2
        folder = config_file.resolve().parent
    else:
        folder = Path.cwd().resolve()
    supervisor = Supervisor(
        target, project, dict(options), folder, watch=watch, poll=poll, grace=grace
    )
    return asyncio.run(supervisor.main())


@dataclass(eq=False)
class Worker:
    """One worker process, as the supervisor sees it."""

    proc: asyncio.subprocess.Process
    started: float
    slot: int  # which of the `workers` places it fills
    ready_at: float | None = None
    summary: dict[str, Any] | None = None  # routes, channel rules, broker (from its ready line)
    retiring: bool = False
    done: bool = False
    control: int = -1  # the write end of its control pipe
    answered: bool = False  # said ready, error or fatal
    error_page: bool = False  # if it cannot start, it serves a 503 with the error

    def signal(self, signum: int) -> None:
        if not self.done and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def tell(self, command: str) -> None:
        """One line on its control pipe (nothing when it is gone)."""
        if self.control >= 0 and not self.done:
            with contextlib.suppress(OSError):
                os.write(self.control, command.encode() + b"\n")


@dataclass
class Slot:
    """One of the `workers` places: the worker serving in it, and its crashes in a row."""

    index: int
    current: Worker | None = None
    crashes: int = 0
    failed: Worker | None = None  # serving the error page while nothing else serves


@dataclass
class Reload:
    """A worker being started, and why; `rest` are the slots to replace after this one."""

    worker: Worker
    since: float  # when the change was seen
    changed: list[str]  # what changed (relative to the project folder)
    restart: bool  # after the previous worker exited on its own
    rest: list[int] = field(default_factory=list)
    why: str = ""  # "SIGHUP" for a reload asked by signal
    frozen: Worker | None = None  # the old worker whose channels this one takes over
    exporting: bool = False  # waiting for `frozen` to write them


class Supervisor:
    """Holds the sockets, watches the folder, starts and replaces the workers.

    Everything happens in one loop reading `events` (changes, worker news, signals, timers).
    Each slot has one current worker; at start every slot starts at once, a reload (a change
    or SIGHUP) replaces them one slot at a time, each old worker retiring only once its
    replacement is ready.
    """

    def __init__(
        self,
        target: str | None,
        project: str | None,
        options: dict[str, Any],
        folder: Path,
        *,
        watch: bool = True,
        poll: bool = False,
        grace: float = 2.0,
    ) -> None:
        self.target = target
        self.project = project
        self.options = options
        self.folder = folder
        self.watch = watch
        self.poll = poll
        self.grace = grace
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.filter = ProjectFilter(folder)
        self.config_names: tuple[str, ...] = (".env",)
        if project is not None:
            from rtserve.config.project import find_config

            self.config_names += (find_config(project).name,)
        self.stop_watching = asyncio.Event()
        self.sockets: list[socket.socket] = []
        self.settings = ServerSettings()
        self.listen_key: tuple[Any, ...] = ()
        self.lifeline_r = -1
        self.lifeline_w = -1
        self.workers: set[Worker] = set()  # every worker process not reaped yet
        self.slots: list[Slot] = [Slot(0)]
        self.pending: dict[int, Reload] = {}  # by slot
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.admin: Any = None  # the combined admin interface, with several workers
        self.status = 0  # the exit status once every worker is gone
        self.reuse_port = False  # workers listen on their own SO_REUSEPORT sockets
        self.handovers: Path | None = None  # a private folder for the channels' state
        self.announced = ""  # "serving" or "waiting" once the URLs were printed

    @property
    def many(self) -> bool:
        return len(self.slots) > 1

    # --- the loop --------------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.events.put_nowait, ("signal", sig))
        watcher = asyncio.create_task(self._watch()) if self.watch else None
        try:
            status = await self._run()
        finally:
            self.stop_watching.set()
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher], timeout=2)
            if self.admin is not None:
                await self.admin.stop()
            for sock in self.sockets:
                sock.close()
            if self.settings.unix_socket and self.sockets:
                with contextlib.suppress(OSError):
                    os.unlink(self.settings.unix_socket)
            for fd in (self.lifeline_r, self.lifeline_w):
                if fd >= 0:
                    os.close(fd)
            if self.handovers is not None:
                shutil.rmtree(self.handovers, ignore_errors=True)
        return status

    async def _run(self) -> int:
        while True:  # where to listen: from the options and the project's `server` settings
            try:
                self.settings, static, shared = self._listen_settings()
                break
            except Exception as exc:
                if self.project is None or not self.watch:
                    click.echo(plain_error(exc, self.folder), err=True)
                    return 2
                fallback = apply_options(ServerSettings(), self.options)
                if fallback.workers == 1:
                    # Listen where the options and the defaults say, and let the worker answer
                    # with the error (a 503) until a save fixes the file.
                    self.settings, static, shared = fallback, [], True
                    break
                click.echo(plain_error(exc, self.folder), err=True)
                click.echo("waiting for a change to retry", err=True)
            if not await self._wait_for_change():
                return 0
        count = self.settings.workers
        if count > 1 and not shared:
            click.echo(
                f"error: {count} workers need a broker they share for their channels, and the "
                "memory broker lives in one process: "
                + (
                    "set `broker: redis://127.0.0.1:6379/0` in rtserve.yaml"
                    if self.project is not None
                    else 'give the App `broker=RedisBroker("redis://127.0.0.1:6379/0")`'
                )
                + " (or run one worker)",
                err=True,
            )
            return 2
        self.slots = [Slot(i) for i in range(count)]
        self.filter.static = static
        self.listen_key = listen_key(self.settings)
        # Several workers on TCP: each listens on its own SO_REUSEPORT socket, so the kernel
        # balances connections (one shared socket goes mostly to whichever wakes first).
        self.reuse_port = (
            self.many
            and not self.settings.unix_socket
            and sys.platform == "linux"
            and hasattr(socket, "SO_REUSEPORT")
        )
        try:
            if self.reuse_port:
                settings = dataclasses.replace(self.settings, reuse_port=True)
                self.sockets = bind(settings, listen=False)
            else:
                self.sockets = bind(self.settings)
        except OSError as exc:
            click.echo(f"error: {listen_failure(self.settings, exc)}", err=True)
            return 1
        self.lifeline_r, self.lifeline_w = os.pipe()
        self.handovers = Path(tempfile.mkdtemp(prefix="rtserve-reload-"))
        if self.many:
            await self._start_admin()
        now = time.monotonic()
        for slot in self.slots:
            await self._start(slot.index, now)
        while self.workers or not self.stopping:
            event = await self.events.get()
            await self._handle(event)
        return self.status

    async def _start_admin(self) -> None:
        """With several workers, the admin interface the user reaches sums theirs."""
        from rtserve.stats.combined import CombinedAdmin

        config = admin_config(self.project, self.target, self.folder)
        if config is None:
            return
        self.admin = CombinedAdmin(config, self.folder, len(self.slots))
        await self.admin.start()

    async def _wait_for_change(self) -> bool:
        """Before anything runs: True on a change, False on a signal."""
        while True:
            event = await self.events.get()
            if event[0] == "change":
                return True
            if event[0] == "signal" and event[1] != signal.SIGHUP:
                return False

    async def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "change":
            await self._changed(event[1], event[2])
        elif kind == "ready":
            await self._ready(event[1])
        elif kind == "loaded":
            self._loaded(event[1])
        elif kind == "exported":
            self._exported(event[1], Path(event[2]), event[3])
        elif kind == "handover timeout":
            reload = self.pending.get(event[1].slot)
            if reload is not None and reload.worker is event[1] and reload.exporting:
                click.echo(
                    "the old worker did not hand its channels over in time: the new one starts "
                    "with empty channels",
                    err=True,
                )
                self._exported(reload.frozen, self._state_file(event[1]), False)
        elif kind == "failed":
            self._failed(event[1], event[2], event[3])
        elif kind == "exited":
            self._exited(event[1], event[2])
        elif kind == "restart":
            slot = self.slots[event[1]]
            if not self.stopping and slot.current is None and slot.index not in self.pending:
                await self._start(slot.index, time.monotonic(), restart=True)
        elif kind == "signal":
            if event[1] == signal.SIGHUP:
                await self._reload_all(time.monotonic(), [], why="SIGHUP")
            else:
                self._signalled()
        elif kind == "kill":
            worker = event[1]
            if not worker.done:
                click.echo(f"worker {worker.proc.pid} did not stop in time: killing it", err=True)
                worker.signal(signal.SIGKILL)

    # --- changes ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        import watchfiles

        try:
            async for changes in watchfiles.awatch(
                self.folder,
                watch_filter=self.filter,
                stop_event=self.stop_watching,
                force_polling=self.poll or None,
                debounce=1600,
                step=50,
            ):
                self.events.put_nowait(("change", {path for _, path in changes}, time.monotonic()))
        except Exception as exc:  # the folder went away, too many watches, ...
            click.echo(f"rtserve: watching {self.folder} stopped: {exc}", err=True)

    async def _changed(self, paths: set[str], since: float) -> None:
        if self.stopping:
            return
        names = sorted({relative(Path(p), self.folder) for p in paths})
        for slot in self.slots:
            slot.crashes = 0
        if self.project is not None and any(Path(p).name in self.config_names for p in paths):
            self._check_listen_settings()
        await self._reload_all(since, names)

    async def _reload_all(self, since: float, changed: list[str], why: str = "") -> None:
        """Replace every slot's worker, one slot after another, starting with slot 0."""
        if self.stopping:
            return
        for reload in list(self.pending.values()):  # a newer save wins over workers starting
            self._retire(reload.worker)
            self._thaw(reload)
            changed = sorted({*reload.changed, *changed})
            why = why or reload.why
        self.pending.clear()
        slots = [slot.index for slot in self.slots]
        await self._start(slots[0], since, changed, rest=slots[1:], why=why)

    def _check_listen_settings(self) -> None:
        try:
            settings, static, _ = self._listen_settings()
        except Exception:
            return  # the new worker reports it
        self.filter.static = static
        if listen_key(settings) != self.listen_key or settings.workers != len(self.slots):
            click.echo(
                "note: where to listen or how many workers changed; it applies when `rtserve "
                f"run` starts again (still serving {', '.join(self._urls())})",
                err=True,
            )

    def _listen_settings(self) -> tuple[ServerSettings, list[Path], bool]:
        """The server settings, static paths, and whether several workers may serve it (a
        broker shared by processes, or no channels to share)."""
        if self.project is None:
            from rtserve.broker.memory import MemoryBroker
            from rtserve.cli.loader import load_app
            from rtserve.realtime.component import Channels

            assert self.target is not None
            app = load_app(self.target)
            # An app without channel rules has nothing for workers to share.
            channels = app.component(Channels)
            shared = (
                channels is None
                or not isinstance(channels.broker, MemoryBroker)
                or not list(channels.hub.rules)
            )
            return apply_options(app.settings, self.options), [], shared
        return listen_settings(self.project, self.options)

    # --- workers ---------------------------------------------------------------------------

    async def _start(
        self,
        slot: int,
        since: float,
        changed: list[str] | None = None,
        *,
        restart: bool = False,
        rest: list[int] | None = None,
        why: str = "",
    ) -> None:
        ready_r, ready_w = os.pipe()
        control_r, control_w = os.pipe()
        fds = [] if self.reuse_port else [sock.fileno() for sock in self.sockets]
        addresses = [[s.family, s.getsockname()] for s in self.sockets] if self.reuse_port else []
        # With nothing serving in its slot, a worker that cannot start answers with the error.
        error_page = self.watch and self.slots[slot].current is None
        spec = {
            "target": self.target,
            "project": self.project,
            "options": {**self.options, "fd": None},
            "fds": fds,
            "listen_again": addresses,
            "backlog": self.settings.backlog,
            "ready_fd": ready_w,
            "control_fd": control_r,
            "lifeline_fd": self.lifeline_r,
            "grace": self.grace,
            "folder": str(self.folder),
            "worker": slot,
            "workers": len(self.slots),
            "error_page": error_page,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "rtserve.cli.reload_worker",
                stdin=asyncio.subprocess.DEVNULL,
                env={
                    **os.environ,
                    SPEC_ENV: json.dumps(spec),
                    # For the app: which worker this is, of how many (a task to run once
                    # per machine starts in worker 0).
                    "RTSERVE_WORKER": str(slot),
                    "RTSERVE_WORKERS": str(len(self.slots)),
                },
                pass_fds=(*fds, ready_w, control_r, self.lifeline_r),
                process_group=0,
            )
        except BaseException:
            os.close(ready_r)
            os.close(control_w)
            raise
        finally:
            os.close(ready_w)
            os.close(control_r)
        worker = Worker(proc, time.monotonic(), slot, control=control_w, error_page=error_page)
        self.workers.add(worker)
        self.pending[slot] = Reload(worker, since, changed or [], restart, rest or [], why)
        task = asyncio.create_task(self._follow(worker, ready_r))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _follow(self, worker: Worker, ready_r: int) -> None:
        """Turn what a worker says on its pipe, and its exit, into events."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        pipe = os.fdopen(ready_r, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                self._said(worker, line)
        except (ValueError, OSError):
            pass
        finally:
            transport.close()
        code = await worker.proc.wait()
        if not worker.answered:
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            self.events.put_nowait(
                ("failed", worker, [f"the worker {how} before it was ready (see above)"], False)
            )
        self.events.put_nowait(("exited", worker, code))

    def _said(self, worker: Worker, line: bytes) -> None:
        """One line from a worker's pipe, as an event."""
        if line.startswith(b"ready"):
            worker.answered = True
            try:
                worker.summary = json.loads(line[5:] or b"{}")
            except ValueError:
                worker.summary = {}
            self.events.put_nowait(("ready", worker))
        elif line.startswith((b"error ", b"fatal ")):
            worker.answered = True
            try:
                lines = [str(x) for x in json.loads(line[6:])]
            except ValueError:
                lines = [line[6:].decode(errors="replace").strip()]
            self.events.put_nowait(("failed", worker, lines, line.startswith(b"fatal ")))
        elif line.startswith(b"loaded"):
            self.events.put_nowait(("loaded", worker))
        elif line.startswith(b"exported "):
            _, how, path = line.decode(errors="replace").strip().split(" ", 2)
            self.events.put_nowait(("exported", worker, path, how == "ok"))

    # --- handing the channels over ---------------------------------------------------------

    def _loaded(self, worker: Worker) -> None:
        """A new worker with a memory broker loaded the project: ask the worker it replaces
        for its channels, or let it start empty."""
        reload = self.pending.get(worker.slot)
        old = self.slots[worker.slot].current
        if (
            reload is None
            or reload.worker is not worker
            or old is None
            or old.retiring
            or self.handovers is None
        ):
            worker.tell("fresh")
            return
        reload.frozen, reload.exporting = old, True
        old.tell(f"export {self._state_file(worker)}")
        asyncio.get_running_loop().call_later(
            HANDOVER_TIMEOUT, self.events.put_nowait, ("handover timeout", worker)
        )

    def _exported(self, old: Worker | None, path: Path, done: bool) -> None:
        """The old worker wrote its channels to `path` (or could not): the new one goes on."""
        for reload in self.pending.values():
            mine = self._state_file(reload.worker) == path
            if reload.frozen is old and reload.exporting and mine:
                reload.exporting = False
                reload.worker.tell(f"import {path}" if done else "fresh")
                return
        if old is not None:
            old.tell("thaw")  # the worker it was for is gone

    def _state_file(self, worker: Worker) -> Path:
        assert self.handovers is not None
        return self.handovers / f"channels-{worker.proc.pid}.json"

    def _thaw(self, reload: Reload) -> None:
        """A reload that will not serve gives the old worker its channels back."""
        if reload.frozen is not None:
            reload.frozen.tell("thaw")
            reload.frozen = None
        with contextlib.suppress(OSError):
            self._state_file(reload.worker).unlink()

    async def _ready(self, worker: Worker) -> None:
        reload = self.pending.get(worker.slot)
        if reload is None or reload.worker is not worker:
            return  # superseded, and told to stop already
        del self.pending[worker.slot]
        slot = self.slots[worker.slot]
        now = worker.ready_at = time.monotonic()
        old, slot.current = slot.current, worker
        for replaced in (old, slot.failed):
            if replaced is not None:
                self._retire(replaced)
        slot.failed = None
        self._announce("serving")
        if self.admin is not None:
            self.admin.worker_ready(worker.slot, worker.proc.pid)
        if reload.rest:  # a rolling reload goes on with the next slot
            await self._start(
                reload.rest[0], reload.since, reload.changed, rest=reload.rest[1:], why=reload.why
            )
            return
        took = f"{(now - reload.since) * 1000:.0f} ms"
        changed = changed_suffix(reload.changed) or (f" ({reload.why})" if reload.why else "")
        who = f"worker {worker.slot} (pid {worker.proc.pid}) " if self.many else ""
        if reload.restart:
            line = f"{who}restarted in {took}"
        elif reload.changed or reload.why:
            workers = f"{len(self.slots)} workers " if self.many else ""
            line = f"{workers}reloaded in {took}" + changed
        else:
            line = f"{who}ready in {took}"
            summary = worker.summary or {}
            rules = summary.get("channels") or []
            line += (
                f": {summary.get('routes', '?')} route(s), "
                f"{len(rules)} channel rule(s){' (' + ', '.join(rules) + ')' if rules else ''}, "
                f"broker {summary.get('broker', '?')}"
            )
        click.echo(click.style(line, fg="green"))

    def _failed(self, worker: Worker, lines: list[str], fatal: bool) -> None:
        reload = self.pending.get(worker.slot)
        if reload is None or reload.worker is not worker:
            return
        del self.pending[worker.slot]
        self._thaw(reload)
        if (fatal or not self.watch) and not any(slot.current for slot in self.slots):
            # Nothing serves, and no change to the code would help (fatal), or none is
            # watched for (reload off): waiting would only hang.
            for line in lines:
                click.echo(f"error: {line}", err=True)
            self.status = 2
            self._signalled()
            return
        current = self.slots[worker.slot].current
        if worker.error_page and worker.answered and not fatal:  # it stays, answering 503
            slot = self.slots[worker.slot]
            if slot.failed is not None:
                self._retire(slot.failed)
            slot.failed = worker
            if not any(s.current for s in self.slots):
                self._announce("waiting")
        what = changed_suffix(reload.changed) or (f" ({reload.why})" if reload.why else "")
        if current is not None:
            head = "reload failed" + what
            head += "; still serving the previous version:"
        elif reload.restart:
            head = "restart failed; waiting for a change:"
        elif reload.changed:
            head = "reload failed" + what + "; waiting for a change:"
        else:
            head = "start failed; waiting for a change:"
        if self.many:
            head = f"worker {worker.slot}: {head}"
        click.echo(click.style(head, fg="red", bold=True), err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)

    def _exited(self, worker: Worker, code: int) -> None:
        worker.done = True
        if worker.control >= 0:
            os.close(worker.control)
            worker.control = -1
        self.workers.discard(worker)
        for reload in list(self.pending.values()):
            if reload.frozen is worker and reload.exporting:  # it died before writing
                self._exported(worker, self._state_file(reload.worker), False)
        slot = self.slots[worker.slot]
        if worker is slot.failed:
            slot.failed = None
        if worker is not slot.current or self.stopping:
            return
        slot.current = None
        if self.admin is not None:
            self.admin.worker_gone(worker.slot)
        uptime = time.monotonic() - (worker.ready_at or worker.started)
        if uptime >= STABLE_AFTER:
            slot.crashes = 0
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        who = f"worker {worker.slot} (pid {worker.proc.pid})" if self.many else "the worker"
        if slot.index in self.pending:
            click.echo(f"{who} {how}", err=True)
            return
        if slot.crashes >= len(RESTART_DELAYS):
            if self.watch:
                click.echo(f"{who} {how} again; waiting for a change", err=True)
                return
            click.echo(f"{who} {how} again; giving up on it", err=True)
            if not any(s.current for s in self.slots) and not self.pending:
                self.status = 1  # nothing serves: let whoever started us (systemd) decide
                self._signalled()
            return
        delay = RESTART_DELAYS[slot.crashes]
        slot.crashes += 1
        click.echo(f"{who} {how}; restarting in {delay:g} s", err=True)
        asyncio.get_running_loop().call_later(
            delay, self.events.put_nowait, ("restart", slot.index)
        )

    def _retire(self, worker: Worker) -> None:
        """SIGTERM: close WebSockets with 1012, give requests the grace, exit (or be killed)."""
        if worker.retiring or worker.done:
            return
        worker.retiring = True
        worker.signal(signal.SIGTERM)
        self._kill_later(worker, self.grace)

    def _kill_later(self, worker: Worker, grace: float) -> None:
        delay = grace + self.settings.websocket.close_timeout + KILL_MARGIN
        asyncio.get_running_loop().call_later(delay, self.events.put_nowait, ("kill", worker))

    def _signalled(self) -> None:
        currents = [slot.current for slot in self.slots if slot.current is not None]
        if self.stopping:  # a second signal: stop at once
            for worker in list(self.workers):
                worker.signal(signal.SIGINT if worker in currents else signal.SIGKILL)
            return
        self.stopping = True
        self.stop_watching.set()
        for reload in self.pending.values():
            self._retire(reload.worker)
            self._thaw(reload)
        self.pending.clear()
        for slot in self.slots:
            if slot.failed is not None:
                self._retire(slot.failed)
        for worker in currents:
            worker.signal(signal.SIGINT)  # the project's graceful shutdown
            self._kill_later(worker, self.settings.timeouts.graceful)

    # --- what the user sees ----------------------------------------------------------------

    def _urls(self) -> list[str]:
        return listen_urls(self.sockets, self.settings.tls.enabled)

    def _announce(self, state: str) -> None:
        """Print where it listens, with `state` ("serving", or "waiting": every request gets
        the error page): the whole banner the first time, then the URLs when it changes."""
        if state == self.announced:
            return
        first, self.announced = not self.announced, state
        if not first:
            for line in url_lines(self._urls(), state):
                click.echo(click.style(line, fg="cyan"))
            return
        kinds = "*.py, *.yaml, *.yml, .env" + (", static files" if self.filter.static else "")
        watching = f"watching {relative(self.folder, Path.cwd())} ({kinds})"
        reload = f"reload on: {watching}" + (" by polling" if self.poll else "")
        if not self.watch:
            reload = "reload off"
        show_banner(self._urls(), state, reload, self._workers_line() if self.many else None)

    def _workers_line(self) -> str:
        admin = ""
        if self.admin is not None and self.admin.addresses:
            admin = f"; stats summed on {', '.join(self.admin.addresses)}"
        return f"{len(self.slots)} workers; SIGHUP reloads them one by one{admin}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
