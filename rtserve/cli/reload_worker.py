"""A reload worker (`python -m rtserve.cli.reload_worker`): load the project, serve the
sockets the supervisor bound, say `ready` (or the compact error) on its pipe; see
rtserve/cli/reload.py for how the two talk."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from rtserve.broker.base import BrokerError
from rtserve.broker.memory import MemoryBroker
from rtserve.cli.listening import listen_again, listen_settings, worker_socket
from rtserve.cli.reload import SPEC_ENV
from rtserve.cli.reload_error_page import error_app
from rtserve.cli.reload_errors import compact_exception, compact_issues
from rtserve.cli.reload_state import export_state, import_state
from rtserve.config.loader import ConfigErrors
from rtserve.errors import ConfigError
from rtserve.realtime.component import Channels, channel_rules
from rtserve.server.settings import ServerSettings

log = logging.getLogger("rtserve.server")


class _Failed(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _worker_main() -> None:
    """A worker: load the project, serve the inherited sockets, say when ready."""
    from rtserve.cli.options import apply_options
    from rtserve.logs import setup_logging
    from rtserve.server.listener import new_event_loop

    spec = json.loads(os.environ.pop(SPEC_ENV))
    # Each worker imports the project afresh; writing no bytecode means no stale .pyc when a
    # file is saved twice within a second at the same size.
    sys.dont_write_bytecode = True
    setup_logging()
    folder = Path(spec["folder"])
    ready_fd: int = spec["ready_fd"]
    app: Any = None
    failure: list[str] | None = None
    try:
        app = _load(spec, folder)
        settings = apply_options(app.settings, spec["options"])
        settings.fd = None
        settings.unix_socket = None  # the supervisor owns the socket (and its file)
        app.settings = settings
        if spec.get("workers", 1) > 1 and app.admin is not None:
            # The supervisor serves the admin address, summing the workers' own interfaces.
            from rtserve.stats.admin import enable_admin

            enable_admin(app, socket=worker_socket(folder, spec["worker"]))
    except _Failed as exc:
        if not spec.get("error_page"):
            _report(ready_fd, exc.lines)
        failure = exc.lines
    broker = None if app is None else _memory_broker(app)
    if broker is not None:
        _take_over(broker, ready_fd, spec["control_fd"])
    sockets = [socket.socket(fileno=fd) for fd in spec["fds"]]
    if spec.get("listen_again"):
        try:
            sockets = listen_again(spec["listen_again"], spec["backlog"])
        except OSError as exc:
            _report(ready_fd, [f"cannot listen: {exc}"])
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if failure is None:
            failure = runner.run(_serve(app, settings, sockets, spec, folder))
        if failure is not None:
            page = error_app(failure, _error_page_settings(spec))
            runner.run(_serve(page, page.settings, sockets, spec, folder, failure))


def _error_page_settings(spec: Mapping[str, Any]) -> ServerSettings:
    """How to serve the error page: the project's `server` settings (TLS, limits) when they
    still read, else the defaults, with `run`'s options."""
    from rtserve.cli.options import apply_options

    settings = ServerSettings()
    if spec["project"] is not None:
        with contextlib.suppress(Exception):
            settings = listen_settings(spec["project"], {})[0]
    settings = apply_options(settings, spec["options"])
    settings.fd = None
    settings.unix_socket = None
    return settings


def _take_over(broker: MemoryBroker, ready_fd: int, control_fd: int) -> None:
    """Before serving: say `loaded`, and take the channels the supervisor hands over (the
    previous worker's state), if any."""
    os.write(ready_fd, b"loaded\n")
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(control_fd, 4096)
        if not chunk:  # the supervisor is gone: the lifeline stops us soon
            break
        line += chunk
    command, _, path = line.decode(errors="replace").strip().partition(" ")
    if command == "import":
        count = import_state(broker, Path(path))
        log.debug("took over %d channel(s) from the previous worker", count)


def _memory_broker(app: Any) -> MemoryBroker | None:
    """The memory broker of the app's channels, whose state a reload hands over; else None."""
    channels = app.component(Channels)
    if channels is not None and isinstance(channels.broker, MemoryBroker):
        return channels.broker
    return None


def _summary(app: Any) -> dict[str, Any]:
    """What the start-up line shows of the app: routes, channel rules, broker ('none' for
    an app without channels)."""
    routes = {endpoint.pattern for _, endpoint in app.router.endpoints}
    channels = app.component(Channels)
    broker = "none"
    if channels is not None:
        broker = type(channels.broker).__name__.removesuffix("Broker").lower() or "?"
    return {
        "routes": len(routes),
        "channels": [rule.pattern for rule in channel_rules(app)],
        "broker": broker,
    }


def _report(ready_fd: int, lines: list[str], *, fatal: bool = False) -> NoReturn:
    """Tell the supervisor why this worker cannot serve, and exit 2; `fatal`: nor can any
    other (the broker is unreachable), so the supervisor stops too."""
    kind = b"fatal " if fatal else b"error "
    os.write(ready_fd, kind + json.dumps(lines).encode() + b"\n")
    os.close(ready_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)  # threads the project's modules may have started do not hold the exit


def _load(spec: Mapping[str, Any], folder: Path) -> Any:
    from rtserve.cli.loader import load_app
    from rtserve.config.project import build_app, find_config, load_project

    try:
        if spec["project"] is not None:
            config_file = find_config(spec["project"])
            if not config_file.exists():
                raise _Failed([f"no {config_file.name} in {config_file.parent}"])
            config, project_folder = load_project(config_file)
            return build_app(config, project_folder)
        return load_app(spec["target"])
    except ConfigErrors as exc:
        raise _Failed(compact_issues(exc.issues, folder)) from None
    except ConfigError as exc:
        raise _Failed([str(exc)]) from None
    except Exception as exc:
        raise _Failed(compact_exception(exc, folder)) from None


async def _serve(
    app: Any,
    settings: ServerSettings,
    sockets: list[socket.socket],
    spec: Mapping[str, Any],
    folder: Path,
    failure: list[str] | None = None,
) -> list[str] | None:
    """Serve `app` until told to stop, and say `ready` once it accepts. With `failure`, `app`
    is the error page of a project that does not start, and the supervisor is told `error`.
    The compact error when the project does not start and the error page may stand in."""
    from rtserve.server.listener import Server

    loop = asyncio.get_running_loop()
    server = Server(app, settings)
    ready_fd: int = spec["ready_fd"]
    try:
        startup = getattr(app, "startup", None)
        if startup is not None:
            await startup()
        await server.start(sockets)
    except BrokerError as exc:  # not the code's fault: no reload would fix it
        _report(ready_fd, [f"cannot start: {exc}"], fatal=True)
    except Exception as exc:
        lines = failure or compact_exception(exc, folder)
        if failure is None and spec.get("error_page"):
            return lines
        _report(ready_fd, lines)
    stopping: list[asyncio.Task[None]] = []

    def stop(restart: bool) -> None:
        if stopping:  # asked again: close every connection now
            log.warning("second signal: closing every connection now")
            if server.state is not None:
                for conn in list(server.state.connections):
                    conn.abort()
            return
        grace = float(spec["grace"]) if restart else settings.timeouts.graceful
        if not restart:
            log.info("shutting down (grace %gs)", grace)
        stopping.append(loop.create_task(server.shutdown(grace, restart=restart)))

    lifeline: int = spec["lifeline_fd"]

    def on_lifeline() -> None:
        if os.read(lifeline, 1) == b"":  # the supervisor is gone
            loop.remove_reader(lifeline)
            stop(False)

    loop.add_signal_handler(signal.SIGTERM, stop, True)
    loop.add_signal_handler(signal.SIGINT, stop, False)
    loop.add_reader(lifeline, on_lifeline)
    control: int = spec["control_fd"]
    commands = _Commands(_memory_broker(app) if failure is None else None, ready_fd)
    loop.add_reader(control, commands.read, control)
    gc.collect()
    gc.freeze()
    # ready_fd stays open: the supervisor reads what later commands answer on it.
    if failure is None:
        os.write(ready_fd, b"ready " + json.dumps(_summary(app)).encode() + b"\n")
    else:
        os.write(ready_fd, b"error " + json.dumps(failure).encode() + b"\n")
    try:
        await server.wait_stopped()
    finally:
        shutdown_hook = getattr(app, "shutdown", None)
        if shutdown_hook is not None:
            await shutdown_hook()
    return None


class _Commands:
    """What the supervisor asks of a serving worker, a line each on the control pipe:
    `export PATH` (freeze the memory broker, write its state, answer `exported ok PATH` or
    `exported none PATH`) and `thaw` (the replacement failed: accept publications again)."""

    def __init__(self, broker: Any, answers: int) -> None:
        self.broker = broker if isinstance(broker, MemoryBroker) else None
        self.answers = answers
        self.pending = b""
        self.tasks: set[asyncio.Task[None]] = set()

    def read(self, fd: int) -> None:
        chunk = os.read(fd, 4096)
        if not chunk:  # the supervisor is gone: the lifeline stops this worker
            asyncio.get_running_loop().remove_reader(fd)
            return
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            command, _, argument = line.decode(errors="replace").partition(" ")
            if command == "export":
                task = asyncio.get_running_loop().create_task(self.export(Path(argument)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif command == "thaw" and self.broker is not None:
                self.broker.freeze(False)

    async def export(self, path: Path) -> None:
        done = self.broker is not None and await export_state(self.broker, path)
        os.write(self.answers, f"exported {'ok' if done else 'none'} {path}\n".encode())


if __name__ == "__main__":
    from rtserve.cli.reload_worker import _worker_main as worker_main  # the module, not this copy

    worker_main()
