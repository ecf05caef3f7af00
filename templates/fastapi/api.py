"""The FastAPI app: a todo list whose new items are published to the `todos` channel.

rtserve serves it at /api (rtserve.yaml, `asgi: api:api`); `App.of(request.scope)` is the
rtserve App it runs in, whose `publish` reaches every page subscribed to the channel.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

from rtserve import App

api = FastAPI(title="todos")
todos: list[dict[str, object]] = []  # a database, in a real app


class NewTodo(BaseModel):
    text: str = Field(min_length=1, max_length=200)


def channels(request: Request) -> App:
    """The rtserve App this API runs in (a FastAPI dependency)."""
    return App.of(request.scope)


@api.get("/todos")
async def list_todos() -> list[dict[str, object]]:
    return todos


@api.post("/todos", status_code=201)
async def add_todo(new: NewTodo, rt: Annotated[App, Depends(channels)]) -> dict[str, object]:
    todo: dict[str, object] = {"id": len(todos) + 1, "text": new.text}
    todos.append(todo)
    await rt.publish("todos", todo)
    return todo
