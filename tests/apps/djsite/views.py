"""Views of the test Django project: JSON, a stream, and a publication to rtserve channels."""

from __future__ import annotations

from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from rtserve import App


def hello(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse(
        {"hello": name, "script_name": request.META["SCRIPT_NAME"], "path": request.path}
    )


async def numbers(request: HttpRequest) -> StreamingHttpResponse:
    async def lines() -> AsyncIterator[str]:
        for n in range(4):
            yield f"{n}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")


async def announce(request: HttpRequest) -> HttpResponse:
    """Publish the posted text to the `news` channel of the rtserve App hosting Django."""
    scope = request.scope  # Django's ASGIRequest has it
    text = request.body.decode()
    position = await App.of(scope).publish("news", {"text": text})
    return JsonResponse({"offset": position.offset})
