"""Run a handler coroutine's first step at once, without a Task, as if it were inside one.

Most handlers finish without suspending; running their first step directly answers them with
no Task and no extra loop iteration. So that `asyncio.timeout()`, `TaskGroup` and
`asyncio.current_task()` still work during that step, a `StandInTask` is the current task
while it runs. If the coroutine suspends, a real Task drives it on, the stand-in forwards to
that Task (a cancel requested before then is replayed), and the stand-in stays the current
task of every later step: to the handler it is one task from start to end, as libraries that
key state on the task need (anyio's cancel scopes, and so httpx, check that a scope is left in
the task that entered it).
"""

from __future__ import annotations

import asyncio
import types
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine, Generator
from typing import Any


class StandInTask:
    """The current task of a first step; forwards to the real Task once there is one."""

    __slots__ = ("__weakref__", "_cancels", "_loop", "task")  # anyio keeps weak references

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cancels = 0
        self.task: asyncio.Task[Any] | None = None

    def attach(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        for _ in range(self._cancels):
            task.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self._cancels += 1
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self._cancels

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        if self._cancels:
            self._cancels -= 1
        return self._cancels

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def __getattr__(self, name: str) -> Any:
        task = object.__getattribute__(self, "task")
        if task is None:
            raise AttributeError(f"{name!r} is not available before the handler suspends")
        return getattr(task, name)


class Suspended:
    """A coroutine stopped at its first suspension point; `finish()` it inside a Task."""

    __slots__ = ("coro", "stand_in", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any, stand_in: StandInTask):
        self.coro = coro
        self.yielded = yielded
        self.stand_in = stand_in

    async def finish(self) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.stand_in.attach(task)
        return await _resume(self.coro, self.yielded, task, self.stand_in)


def first_step(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> Any:
    """Run `coro` until it returns (its value) or suspends (a `Suspended`). Raises as it does."""
    stand_in = StandInTask(loop)
    _enter_task(loop, stand_in)  # type: ignore[arg-type]  # any object will do
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        _leave_task(loop, stand_in)  # type: ignore[arg-type]
    return Suspended(coro, yielded, stand_in)


@types.coroutine
def _resume(
    coro: Coroutine[Any, Any, Any], yielded: Any, task: asyncio.Task[Any], stand_in: StandInTask
) -> Generator[Any, Any, Any]:
    """Drive `coro` on from the suspension point that yielded `yielded`, inside `task`, with
    `stand_in` as the current task of each step."""
    loop = stand_in.get_loop()
    step: Callable[[Any], Any]
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            step, value = coro.throw, exc
        else:
            step, value = coro.send, sent
        _leave_task(loop, task)
        _enter_task(loop, stand_in)  # type: ignore[arg-type]
        try:
            yielded = step(value)
        except StopIteration as stop:
            return stop.value
        finally:
            _leave_task(loop, stand_in)  # type: ignore[arg-type]
            _enter_task(loop, task)
