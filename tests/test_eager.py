"""Handlers run their first step without a Task, yet asyncio behaves as inside one."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest

from rtserve import App, Request
from rtserve.app.eager import StandInTask, Suspended, first_step
from rtserve.testing import ThreadedServer

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    app = App()

    @app.route("/timeout-sync")
    async def timeout_sync(request: Request) -> str:
        async with asyncio.timeout(1):
            return "no await inside"

    @app.route("/timeout-fires")
    async def timeout_fires(request: Request) -> str:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "not timed out"

    @app.route("/timeout-zero")
    async def timeout_zero(request: Request) -> str:
        try:
            async with asyncio.timeout(0):
                await asyncio.sleep(1)
        except TimeoutError:
            return "timed out at once"
        return "not timed out"

    @app.route("/taskgroup")
    async def taskgroup(request: Request) -> list[int]:
        async def square(n: int) -> int:
            await asyncio.sleep(0)
            return n * n

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(square(n)) for n in range(4)]
        return [t.result() for t in tasks]

    @app.route("/current")
    async def current(request: Request) -> dict[str, bool]:
        before = asyncio.current_task() is not None
        await asyncio.sleep(0)
        after = asyncio.current_task() is not None
        return {"before": before, "after": after}

    @app.route("/same-task")
    async def same_task(request: Request) -> dict[str, bool]:
        before = asyncio.current_task()
        await asyncio.sleep(0)
        return {"same": asyncio.current_task() is before}  # libraries key state on the task

    @app.route("/anyio-scope")
    async def anyio_scope(request: Request) -> str:
        # Entered in the first step, left after it suspended: anyio checks it is one task.
        with anyio.fail_after(5):
            await anyio.sleep(0.001)
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(5)
        return f"cancelled: {scope.cancelled_caught}"

    @app.route("/httpx")
    async def call_upstream(request: Request) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(request.query["url"])
        return f"upstream said {answer.text}"

    @app.route("/set/{name}")
    async def set_user(request: Request, name: str) -> str:
        user.set(name)
        await asyncio.sleep(0)
        return user.get()  # still visible after the first suspension

    @app.route("/set-sync/{name}")
    def set_user_sync(request: Request, name: str) -> str:
        user.set(name)
        return user.get()

    @app.route("/get")
    async def get_user(request: Request) -> str:
        return user.get()

    with ThreadedServer(app, access_log=False) as srv:
        yield srv


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/timeout-sync", "no await inside"),
        ("/timeout-fires", "timed out"),
        ("/timeout-zero", "timed out at once"),
        ("/taskgroup", "[0,1,4,9]"),
        ("/current", '{"before":true,"after":true}'),
        ("/same-task", '{"same":true}'),
        ("/anyio-scope", "cancelled: True"),
    ],
)
def test_asyncio_works_in_the_first_step(server: ThreadedServer, path: str, body: str) -> None:
    with server.client() as c:
        r = c.get(path)
        assert (r.status, r.text) == (200, body)


def test_context_variables_do_not_leak_between_requests(server: ThreadedServer) -> None:
    with server.client() as c:
        assert c.get("/set/alice").text == "alice"
        assert c.get("/set-sync/bob").text == "bob"
        assert c.get("/get").text == "nobody"
    with server.client() as other:
        assert other.get("/get").text == "nobody"


def test_pipelined_request_after_a_suspending_one_starts_clean(server: ThreadedServer) -> None:
    from tests.rawhttp import RawClient, get

    with RawClient(server.port) as c:
        c.send(get("/set/carol") + get("/timeout-sync") + get("/get"))
        assert [r.body for r in c.responses(3)] == [b"carol", b"no await inside", b"nobody"]


def test_an_anyio_based_client_works_in_a_handler(server: ThreadedServer) -> None:
    """httpx (on anyio) enters cancel scopes in the handler's first step and leaves them
    after it suspended: rtserve's stand-in for the task must be one task to anyio."""
    with server.client() as c:
        r = c.get(f"/httpx?url={server.url}/timeout-sync")
        assert (r.status, r.text) == (200, "upstream said no await inside")


def _in_a_callback(step: Callable[[asyncio.AbstractEventLoop], object]) -> object:
    """Run `step(loop)` from a loop callback (no current task, as data_received is)."""
    loop = asyncio.new_event_loop()
    try:
        answer: asyncio.Future[object] = loop.create_future()

        def call() -> None:
            try:
                answer.set_result(step(loop))
            except BaseException as exc:  # handed to the test as raised
                answer.set_exception(exc)

        loop.call_soon(call)
        return loop.run_until_complete(answer)
    finally:
        loop.close()


def test_first_step_returns_the_value_with_a_stand_in_current() -> None:
    seen: list[object] = []

    async def handler() -> str:
        seen.append(asyncio.current_task())
        return "done"

    def step(loop: asyncio.AbstractEventLoop) -> object:
        value = first_step(handler(), loop)
        seen.append(asyncio.current_task(loop))
        return value

    assert _in_a_callback(step) == "done"
    assert isinstance(seen[0], StandInTask)
    assert seen[1] is None  # left again after the step


def test_first_step_raises_what_the_handler_raises() -> None:
    async def handler() -> str:
        raise LookupError("no such thing")

    def step(loop: asyncio.AbstractEventLoop) -> object:
        try:
            return first_step(handler(), loop)
        finally:
            assert asyncio.current_task(loop) is None

    with pytest.raises(LookupError, match="no such thing"):
        _in_a_callback(step)


def test_a_ready_future_does_not_suspend() -> None:
    async def handler(ready: asyncio.Future[int]) -> int:
        return await ready + 1

    def step(loop: asyncio.AbstractEventLoop) -> object:
        ready: asyncio.Future[int] = loop.create_future()
        ready.set_result(41)
        return first_step(handler(ready), loop)

    assert _in_a_callback(step) == 42


def test_a_suspended_handler_finishes_in_a_task_as_one_task() -> None:
    tasks: list[object] = []

    async def handler() -> str:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())
        return "later"

    def step(loop: asyncio.AbstractEventLoop) -> object:
        suspended = first_step(handler(), loop)
        assert type(suspended) is Suspended
        return loop.create_task(suspended.finish())

    async def finished(task: object) -> object:
        assert isinstance(task, asyncio.Task)
        return await task

    loop = asyncio.new_event_loop()
    try:
        created: asyncio.Future[object] = loop.create_future()
        loop.call_soon(lambda: created.set_result(step(loop)))
        task = loop.run_until_complete(created)
        assert loop.run_until_complete(finished(task)) == "later"
    finally:
        loop.close()
    assert tasks[0] is tasks[1]
    assert isinstance(tasks[0], StandInTask)


def test_a_cancel_before_the_task_exists_is_replayed() -> None:
    async def handler() -> str:
        stand_in = asyncio.current_task()
        assert stand_in is not None
        stand_in.cancel()
        await asyncio.sleep(1)
        return "not cancelled"

    def step(loop: asyncio.AbstractEventLoop) -> object:
        suspended = first_step(handler(), loop)
        assert type(suspended) is Suspended
        return loop.create_task(suspended.finish())

    loop = asyncio.new_event_loop()
    try:
        created: asyncio.Future[object] = loop.create_future()
        loop.call_soon(lambda: created.set_result(step(loop)))
        task = loop.run_until_complete(created)
        assert isinstance(task, asyncio.Task)
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        loop.close()
