"""`rtserve run` with reload: a supervisor that never leaves you stranded.

The supervisor (the `rtserve run` process) binds the listening socket(s) once and serves
through a worker subprocess that inherits them, so the port never goes away. It watches the
project folder (.py, .yaml/.yml, .env and the files of static routes). On a change it starts
a NEW worker on the same sockets; only when that one has loaded the project and is accepting
does the old one get SIGTERM. A new worker that fails first (a config error, a SyntaxError or
ImportError in a handler module, ...) is reported in a few lines and the old one keeps serving
until a later save fixes things. A worker that exits on its own is started again, with a
short, bounded backoff.

How they talk:

- the worker is `python -m rtserve.cli.reload_worker`, with a JSON spec in the environment variable
  RTSERVE_RELOAD_WORKER: the target, `run`'s options, the inherited listening descriptors
  (`fds`), the write end of a pipe (`ready_fd`), the read end of the lifeline (`lifeline_fd`)
  and the reload grace;
- on `ready_fd` the worker writes `ready` once it accepts connections, or `error <json list
  of lines>` (the compact error) and exits 2;
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
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from rtserve import __version__
from rtserve.cli.reload_errors import plain_error
from rtserve.server.settings import ServerSettings

log = logging.getLogger("rtserve.server")

SPEC_ENV = "RTSERVE_RELOAD_WORKER"
WATCHED_SUFFIXES = (".py", ".yaml", ".yml")
WATCHED_NAMES = (".env",)
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # after a worker exits on its own; then give up
STABLE_AFTER = 10.0  # a worker up this long before it exits does not count as a crash loop
KILL_MARGIN = 5.0  # seconds past a worker's grace before it is killed


# --- the supervisor ------------------------------------------------------------------------


def supervise(
    target: str | None,
    project: str | None,
    options: Mapping[str, Any],
    *,
    poll: bool = False,
    grace: float = 2.0,
) -> int:
    """Serve TARGET/project with reload until SIGINT/SIGTERM; the exit status."""
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
    supervisor = Supervisor(target, project, dict(options), folder, poll=poll, grace=grace)
    return asyncio.run(supervisor.main())


@dataclass(eq=False)
class Worker:
    """One worker process, as the supervisor sees it."""

    proc: asyncio.subprocess.Process
    started: float
    ready_at: float | None = None
    summary: dict[str, Any] | None = None  # routes, channel rules, broker (from its ready line)
    retiring: bool = False
    done: bool = False

    def signal(self, signum: int) -> None:
        if not self.done and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


@dataclass
class Reload:
    """A worker being started, and why."""

    worker: Worker
    since: float  # when the change was seen
    changed: list[str]  # what changed (relative to the project folder)
    restart: bool  # after the previous worker exited on its own


class Supervisor:
    """Holds the sockets, watches the folder, starts and replaces the workers.

    Everything happens in one loop reading `events` (changes, worker news, signals, timers),
    so there is exactly one current worker and at most one starting.
    """

    def __init__(
        self,
        target: str | None,
        project: str | None,
        options: dict[str, Any],
        folder: Path,
        *,
        poll: bool,
        grace: float,
    ) -> None:
        self.target = target
        self.project = project
        self.options = options
        self.folder = folder
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
        self.current: Worker | None = None
        self.pending: Reload | None = None
        self.crashes = 0
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    # --- the loop --------------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.events.put_nowait, ("signal", sig))
        watcher = asyncio.create_task(self._watch())
        try:
            status = await self._run()
        finally:
            self.stop_watching.set()
            watcher.cancel()
            await asyncio.wait([watcher], timeout=2)
            for sock in self.sockets:
                sock.close()
            if self.settings.unix_socket and self.sockets:
                with contextlib.suppress(OSError):
                    os.unlink(self.settings.unix_socket)
            for fd in (self.lifeline_r, self.lifeline_w):
                if fd >= 0:
                    os.close(fd)
        return status

    async def _run(self) -> int:
        while True:  # where to listen: from the options and the project's `server` settings
            try:
                self.settings, static = self._listen_settings()
                break
            except Exception as exc:
                click.echo(plain_error(exc, self.folder), err=True)
                if self.project is None:  # a module:app target is imported here, as `run` does
                    return 2
                click.echo("waiting for a change to retry", err=True)
            if not await self._wait_for_change():
                return 0
        self.filter.static = static
        self.listen_key = _listen_key(self.settings)
        try:
            self.sockets = bind(self.settings)
        except OSError as exc:
            where = self.settings.unix_socket or f"{self.settings.hosts} port {self.settings.port}"
            click.echo(f"error: cannot listen on {where}: {exc.strerror or exc}", err=True)
            return 1
        self.lifeline_r, self.lifeline_w = os.pipe()
        self._banner()
        await self._start(time.monotonic())
        while self.workers or not self.stopping:
            event = await self.events.get()
            await self._handle(event)
        return 0

    async def _wait_for_change(self) -> bool:
        """Before anything runs: True on a change, False on a signal."""
        while True:
            event = await self.events.get()
            if event[0] == "change":
                return True
            if event[0] == "signal":
                return False

    async def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "change":
            await self._changed(event[1], event[2])
        elif kind == "ready":
            self._ready(event[1])
        elif kind == "failed":
            self._failed(event[1], event[2])
        elif kind == "exited":
            self._exited(event[1], event[2])
        elif kind == "restart":
            if not self.stopping and self.current is None and self.pending is None:
                await self._start(time.monotonic(), restart=True)
        elif kind == "signal":
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
        names = sorted({_relative(Path(p), self.folder) for p in paths})
        self.crashes = 0
        if self.project is not None and any(Path(p).name in self.config_names for p in paths):
            self._check_listen_settings()
        changed = names
        if self.pending is not None:  # a newer save wins over a worker still starting
            self._retire(self.pending.worker)
            changed = sorted({*self.pending.changed, *names})
        await self._start(since, changed)

    def _check_listen_settings(self) -> None:
        try:
            settings, static = self._listen_settings()
        except Exception:
            return  # the new worker reports it
        self.filter.static = static
        if _listen_key(settings) != self.listen_key:
            click.echo(
                "note: the address to listen on changed; it applies when `rtserve run` starts "
                f"again (still serving {', '.join(self._urls())})",
                err=True,
            )

    def _listen_settings(self) -> tuple[ServerSettings, list[Path]]:
        from rtserve.cli.options import apply_options

        if self.project is None:
            from rtserve.cli.loader import load_app

            assert self.target is not None
            app = load_app(self.target)
            return apply_options(app.settings, self.options), []
        return listen_settings(self.project, self.options)

    # --- workers ---------------------------------------------------------------------------

    async def _start(
        self, since: float, changed: list[str] | None = None, *, restart: bool = False
    ) -> None:
        ready_r, ready_w = os.pipe()
        fds = [sock.fileno() for sock in self.sockets]
        spec = {
            "target": self.target,
            "project": self.project,
            "options": {**self.options, "fd": None},
            "fds": fds,
            "ready_fd": ready_w,
            "lifeline_fd": self.lifeline_r,
            "grace": self.grace,
            "folder": str(self.folder),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "rtserve.cli.reload_worker",
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, SPEC_ENV: json.dumps(spec)},
                pass_fds=(*fds, ready_w, self.lifeline_r),
                process_group=0,
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        worker = Worker(proc, time.monotonic())
        self.workers.add(worker)
        self.pending = Reload(worker, since, changed or [], restart)
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
            line = await reader.readline()
        except (ValueError, OSError):
            line = b""
        finally:
            transport.close()
        if line.startswith(b"ready"):
            try:
                worker.summary = json.loads(line[5:] or b"{}")
            except ValueError:
                worker.summary = {}
            self.events.put_nowait(("ready", worker))
        elif line.startswith(b"error "):
            try:
                lines = [str(x) for x in json.loads(line[6:])]
            except ValueError:
                lines = [line[6:].decode(errors="replace").strip()]
            self.events.put_nowait(("failed", worker, lines))
        code = await worker.proc.wait()
        if not line.startswith((b"ready", b"error ")):
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            self.events.put_nowait(
                ("failed", worker, [f"the worker {how} before it was ready (see above)"])
            )
        self.events.put_nowait(("exited", worker, code))

    def _ready(self, worker: Worker) -> None:
        reload = self.pending
        if reload is None or reload.worker is not worker:
            return  # superseded, and told to stop already
        self.pending = None
        now = worker.ready_at = time.monotonic()
        old, self.current = self.current, worker
        if old is not None:
            self._retire(old)
        took = f"{(now - reload.since) * 1000:.0f} ms"
        if reload.restart:
            line = f"restarted in {took}"
        elif reload.changed:
            line = f"reloaded in {took}" + _changed_suffix(reload.changed)
        else:
            line = f"ready in {took}"
            summary = worker.summary or {}
            rules = summary.get("channels") or []
            line += (
                f": {summary.get('routes', '?')} route(s), "
                f"{len(rules)} channel rule(s){' (' + ', '.join(rules) + ')' if rules else ''}, "
                f"broker {summary.get('broker', '?')}"
            )
        click.echo(click.style(line, fg="green"))

    def _failed(self, worker: Worker, lines: list[str]) -> None:
        reload = self.pending
        if reload is None or reload.worker is not worker:
            return
        self.pending = None
        if self.current is not None:
            head = "reload failed" + _changed_suffix(reload.changed)
            head += "; still serving the previous version:"
        elif reload.restart:
            head = "restart failed; waiting for a change:"
        elif reload.changed:
            head = "reload failed" + _changed_suffix(reload.changed) + "; waiting for a change:"
        else:
            head = "start failed; waiting for a change:"
        click.echo(click.style(head, fg="red", bold=True), err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)

    def _exited(self, worker: Worker, code: int) -> None:
        worker.done = True
        self.workers.discard(worker)
        if worker is not self.current or self.stopping:
            return
        self.current = None
        uptime = time.monotonic() - (worker.ready_at or worker.started)
        if uptime >= STABLE_AFTER:
            self.crashes = 0
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        if self.pending is not None:
            click.echo(f"the worker {how}", err=True)
            return
        if self.crashes >= len(RESTART_DELAYS):
            click.echo(f"the worker {how} again; waiting for a change", err=True)
            return
        delay = RESTART_DELAYS[self.crashes]
        self.crashes += 1
        click.echo(f"the worker {how}; restarting in {delay:g} s", err=True)
        asyncio.get_running_loop().call_later(delay, self.events.put_nowait, ("restart",))

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
        if self.stopping:  # a second signal: stop at once
            for worker in list(self.workers):
                worker.signal(signal.SIGINT if worker is self.current else signal.SIGKILL)
            return
        self.stopping = True
        self.stop_watching.set()
        if self.pending is not None:
            self._retire(self.pending.worker)
            self.pending = None
        if self.current is not None:
            self.current.signal(signal.SIGINT)  # the project's graceful shutdown
            self._kill_later(self.current, self.settings.timeouts.graceful)

    # --- what the user sees ----------------------------------------------------------------

    def _urls(self) -> list[str]:
        scheme = "https" if self.settings.tls.enabled else "http"
        urls = []
        for sock in self.sockets:
            name = sock.getsockname()
            if sock.family == socket.AF_UNIX:
                urls.append(f"unix:{name}")
            elif sock.family == socket.AF_INET6:
                urls.append(f"{scheme}://[{name[0]}]:{name[1]}")
            else:
                urls.append(f"{scheme}://{name[0]}:{name[1]}")
        return urls

    def _banner(self) -> None:
        kinds = "*.py, *.yaml, *.yml, .env" + (", static files" if self.filter.static else "")
        watching = f"watching {_relative(self.folder, Path.cwd())} ({kinds})"
        reload = f"reload on: {watching}" + (" by polling" if self.poll else "")
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.panel import Panel
            from rich.text import Text

            text = Text()
            for url in self._urls():
                text.append(url + "\n", style="bold cyan")
            text.append(reload, style="dim")
            Console().print(Panel(text, title=f"rtserve {__version__}", expand=False))
        else:
            for url in self._urls():
                click.echo(f"rtserve serving {url}")
            click.echo(reload)


def listen_settings(project: str, options: Mapping[str, Any]) -> tuple[ServerSettings, list[Path]]:
    """The project's `server` settings with `run`'s options applied, and its static paths;
    without importing any of its Python (ConfigErrors when the YAML is wrong)."""
    from rtserve.cli.options import apply_options
    from rtserve.config.loader import load_file
    from rtserve.config.project import ProjectConfig, find_config

    config_file = find_config(project)
    folder = config_file.resolve().parent
    try:
        shown = config_file.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = config_file
    schema = dataclasses.make_dataclass(
        "ListenConfig",
        [
            (f.name, ServerSettings, field(default_factory=ServerSettings))
            if f.name == "server"
            else (f.name, Any, field(default=None))
            for f in dataclasses.fields(ProjectConfig)
        ],
    )
    light: Any = load_file(shown, schema)
    static = []
    for route in light.routes or ():
        if isinstance(route, dict) and isinstance(route.get("static"), str):
            static.append((folder / route["static"]).resolve())
    return apply_options(light.server, options), static


def _listen_key(settings: ServerSettings) -> tuple[Any, ...]:
    return (tuple(settings.hosts), settings.port, settings.unix_socket, settings.tls.enabled)


def bind(settings: ServerSettings) -> list[socket.socket]:
    """Listening sockets as the settings say (as `Server.start` would bind them)."""
    from rtserve.server.listener import _is_stale_socket

    if settings.unix_socket:
        path = settings.unix_socket
        if os.path.exists(path) and _is_stale_socket(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(settings.backlog)
        except OSError:
            sock.close()
            raise
        return [sock]
    socks: list[socket.socket] = []
    port = settings.port
    seen = set()
    try:
        for host in settings.hosts:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, kind, proto, _, address in infos:
                if (family, address[:2]) in seen:
                    continue
                seen.add((family, address[:2]))
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if settings.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(socks) > 1:  # one free port for every address
                    address = (address[0], socks[0].getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(settings.backlog)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class ProjectFilter:
    """What a change must touch to reload: .py, .yaml/.yml, .env and static route files;
    never in .git, __pycache__, node_modules, .pytest_cache (and the like) or a virtualenv."""

    def __init__(self, folder: Path) -> None:
        from watchfiles import DefaultFilter

        self.folder = folder
        self.static: list[Path] = []
        self._default = DefaultFilter()
        self._venvs: set[Path] = set()

    def __call__(self, change: Any, path: str) -> bool:
        if not self._default(change, path):
            return False
        p = Path(path)
        if not (
            p.suffix in WATCHED_SUFFIXES
            or p.name in WATCHED_NAMES
            or any(p == s or s in p.parents for s in self.static)
        ):
            return False
        return not self._in_virtualenv(p)

    def _in_virtualenv(self, path: Path) -> bool:
        for parent in path.parents:
            if parent == self.folder or self.folder not in parent.parents:
                return False
            if parent in self._venvs:
                return True
            if (parent / "pyvenv.cfg").exists():
                self._venvs.add(parent)
                return True
        return False


def _changed_suffix(changed: list[str]) -> str:
    if not changed:
        return ""
    shown = ", ".join(changed[:3])
    if len(changed) > 3:
        shown += f" and {len(changed) - 3} more"
    return f" ({shown} changed)"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve())) or "."
    except ValueError:
        return str(path)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
