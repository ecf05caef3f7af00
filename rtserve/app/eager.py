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

    # Class defaults and no __init__ (nor __slots__): one is made per async request, and a
    # Python __init__ was half of its cost. Instances take weak references (anyio keeps some).
    task: asyncio.Task[Any] | None = None
    result: Any = None  # the handler's return value, once it has returned
    _cancels = 0

    def attach(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        for _ in range(self._cancels):
            task.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()  # a stand-in is only ever current in a running loop

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
    """A handler stopped at its first suspension point; `finish()` it inside a Task."""

    __slots__ = ("driver", "stand_in", "yielded")

    def __init__(self, driver: Generator[Any, Any, None], yielded: Any, stand_in: StandInTask):
        self.driver = driver
        self.yielded = yielded
        self.stand_in = stand_in

    async def finish(self) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.stand_in.attach(task)
        await _resume(self.driver, self.yielded, task, self.stand_in)
        return self.stand_in.result


_RETURNED = object()


@types.coroutine
def _driven(coro: Coroutine[Any, Any, Any], stand_in: StandInTask) -> Generator[Any, Any, None]:
    """Run `coro`, keeping its value on `stand_in`. Returning None, a generator finishes with
    no StopIteration made and caught (`next(g, default)`), where `coro.send` raises one."""
    stand_in.result = yield from coro


def first_step(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> Any:
    """Run `coro` until it returns (its value) or suspends (a `Suspended`). Raises as it does."""
    stand_in = StandInTask()
    driver = _driven(coro, stand_in)
    _enter_task(loop, stand_in)  # type: ignore[arg-type]  # any object will do
    try:
        yielded = next(driver, _RETURNED)
    finally:
        _leave_task(loop, stand_in)  # type: ignore[arg-type]
    if yielded is _RETURNED:
        return stand_in.result
    return Suspended(driver, yielded, stand_in)


@types.coroutine
def _resume(
    driver: Generator[Any, Any, None], yielded: Any, task: asyncio.Task[Any], stand_in: StandInTask
) -> Generator[Any, Any, None]:
    """Drive `driver` on from the suspension point that yielded `yielded`, inside `task`, with
    `stand_in` as the current task of each step."""
    loop = stand_in.get_loop()
    step: Callable[[Any], Any]
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            step, value = driver.throw, exc
        else:
            step, value = driver.send, sent
        _leave_task(loop, task)
        _enter_task(loop, stand_in)  # type: ignore[arg-type]
        try:
            yielded = step(value)
        except StopIteration:
            return
        finally:
            _leave_task(loop, stand_in)  # type: ignore[arg-type]
            _enter_task(loop, task)
