"""The App: owns its router and settings, turns requests into handler calls and responses.

A handler that finishes without awaiting anything is answered inside `data_received`, with no
Task; one that suspends continues in a Task from where it stopped.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import inspect
import logging
import re
import traceback
import types
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextvars import copy_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rtserve.app.component import AdminInterface, Component
from rtserve.app.eager import Suspended, first_step
from rtserve.app.errors_page import error_response
from rtserve.app.handler import SENT, Handler
from rtserve.app.request import Request
from rtserve.app.response import HTML, JSON, OCTETS, TEXT, HTMLResponse, Response, dump_json
from rtserve.app.router import Endpoint, Router
from rtserve.app.signing import CookieSigner, xsrf_tokens_match
from rtserve.app.websocket import WebSocketHandler, WebSocketRoute, accept_websocket
from rtserve.errors import HTTPError
from rtserve.protocol.http11 import encode_headers
from rtserve.server.exchange import Exchange
from rtserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from rtserve.app.shared import SharedResponse
    from rtserve.server.state import Application, ServerState

log = logging.getLogger("rtserve.app")

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[[], Awaitable[None] | None]
ErrorPage = Callable[[Request, HTTPError], Any]  # a Response, None, or an awaitable of one
E = TypeVar("E", bound=ErrorPage)
C = TypeVar("C")

_TEXT_HEADERS = encode_headers([(b"content-type", TEXT.encode())])
_JSON_HEADERS = encode_headers([(b"content-type", JSON.encode())])
_OCTET_HEADERS = encode_headers([(b"content-type", OCTETS.encode())])
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_COMPRESSIBLE = (
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
    "application/manifest+json",
)


class App:
    """A web application: routes, settings and hooks. No global state; make as many as you like.

    cookie_secret: one secret or a list (newest first) for signed cookies; rotation verifies
    with all of them. xsrf_cookies: require the `_xsrf` token on every POST/PUT/PATCH/DELETE.
    gzip_min_size: compress compressible responses at least this big (None: never).
    Channels, an admin interface or a hosted app are components it `mount`s; `rtserve.App`
    is this class with the channels mounted on first use.
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        cookie_secret: str | Sequence[str] | None = None,
        xsrf_cookies: bool = False,
        gzip_min_size: int | None = 1024,
        template_dir: str | Path = "templates",
    ) -> None:
        self.settings = settings or ServerSettings()
        self.router = Router()
        self.xsrf_cookies = xsrf_cookies
        self.gzip_min_size = gzip_min_size
        self.template_dir = Path(template_dir)
        self._secrets = [cookie_secret] if isinstance(cookie_secret, str) else cookie_secret
        self._signer: CookieSigner | None = None
        if self._secrets is not None:
            # Fail at startup, not on the first request, for a secret that is too short.
            self._signer = CookieSigner(list(self._secrets))
        self._templates: Any = None
        self.on_startup: list[Hook] = []
        self.on_shutdown: list[Hook] = []
        self._components: list[Component] = []
        self._finalized = False
        self._error_page: ErrorPage | None = None
        # The state of the server serving this app (set by Server.start), and the admin
        # interface reading it (rtserve.stats.admin.enable_admin, or `admin:` in rtserve.yaml).
        self.server_state: ServerState | None = None
        self.admin: AdminInterface | None = None
        # The middleware around this app's own answering (add_middleware); None: none.
        self.middleware: Application | None = None

    # --- routing ---------------------------------------------------------------------------

    def route(
        self,
        path: str,
        methods: Sequence[str] | None = None,
        *,
        name: str | None = None,
        stream: bool = False,
    ) -> Callable[[F], F]:
        """Decorate a function (sync or async) or a `Handler` subclass to answer `path`.

        Functions get `(request, **path_params)`; `methods` defaults to GET (a Handler class
        answers the methods it defines). `stream=True` lets the handler read the body as it
        arrives with `request.stream()`.
        """

        def decorator(handler: F) -> F:
            self.add_route(path, handler, methods, name=name, stream=stream)
            return handler

        return decorator

    def add_route(
        self,
        path: str,
        handler: Any,
        methods: Sequence[str] | None = None,
        *,
        name: str | None = None,
        stream: bool = False,
    ) -> Endpoint:
        """Register `handler` on `path`; see `route`."""
        is_class = isinstance(handler, type) and issubclass(handler, Handler)
        if methods is None:
            methods = handler.allowed_methods() if is_class else ["GET"]
        if not methods:
            raise TypeError(f"{handler!r} answers no HTTP method")
        if name is None and not is_class and getattr(handler, "__name__", "<") != "<lambda>":
            name = getattr(handler, "__name__", None)
            if name in self.router._names:
                name = None
        return self.router.add(
            path, list(methods), handler, name=name, stream=stream, is_class=is_class
        )

    def websocket(
        self, path: str, *, name: str | None = None, **options: Any
    ) -> Callable[[type[WebSocketHandler]], type[WebSocketHandler]]:
        """Route a `WebSocketHandler` subclass at `path`.

        `options` override the `server.websocket` settings for this route (max_message_size,
        compression, ping_interval, origins, slow_consumer, ...); `subprotocols` lists the
        ones this route speaks, in order of preference.
        """
        route = WebSocketRoute.from_options(options)  # TypeError for an unknown option

        def decorator(cls: type[WebSocketHandler]) -> type[WebSocketHandler]:
            if not (isinstance(cls, type) and issubclass(cls, WebSocketHandler)):
                raise TypeError(f"{cls!r} is not a WebSocketHandler subclass")
            self.router.add(path, ["GET"], cls, name=name, websocket=route)
            return cls

        return decorator

    def add_middleware(self, middleware: Callable[..., Application], /, **options: Any) -> None:
        """Wrap the app's answering in `middleware(inner, **options)` (an Application around
        `inner`: see rtserve.app.middleware); the last one added is the outermost, the first to
        see a request. An app without middleware pays nothing for the seam."""
        inner: Application = self.middleware or _OwnAnswering(self)
        self.middleware = middleware(inner, **options)
        # The server looks both entry points up on the app: the stack's shadow the class's.
        vars(self).update(
            wants_stream=self.middleware.wants_stream, dispatch=self.middleware.dispatch
        )

    def url_for(self, name: str, **params: Any) -> str:
        """The path of the named route with `params` filled in."""
        return self.router.url_for(name, **params)

    def static(
        self,
        prefix: str,
        directory: str | Path,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Serve the files under `directory` at `prefix` (e.g. `/static`), each with `headers`
        added (`{"X-Frame-Options": "DENY"}`)."""
        from rtserve.app.static import StaticFiles

        files = StaticFiles(directory, headers)
        pattern = prefix.rstrip("/") + "/{path:path}"
        self.router.add(pattern, ["GET"], files, name=name or f"static:{prefix}")

    def static_file(
        self,
        path: str,
        file: str | Path,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Serve one file at `path`, with `headers` added."""
        from rtserve.app.static import StaticFile

        self.router.add(path, ["GET"], StaticFile(file, headers), name=name)

    # --- components ------------------------------------------------------------------------

    def mount(self, component: Component) -> None:
        """Install `component` (channels, admin, ...) when the app is finalized, before it
        serves: its routes and hooks are added from its configuration as it is then.
        RuntimeError once the app is finalized (serving, or its routes listed)."""
        if self._finalized:
            raise RuntimeError(
                f"cannot mount {type(component).__name__}: the app is already finalized "
                "(serving, or its routes listed); mount components before serving"
            )
        self._components.append(component)

    def component(self, kind: type[C]) -> C | None:
        """The mounted component of type `kind`, or None."""
        for component in self._components:
            if isinstance(component, kind):
                return component
        return None

    @property
    def finalized(self) -> bool:
        """True once the mounted components are installed (see `finalize`)."""
        return self._finalized

    def finalize(self) -> None:
        """Install the mounted components: their routes and startup/shutdown hooks. Called
        by `startup` (so by every server and test client), by the project loader and by
        `rtserve routes`; the second call does nothing."""
        if self._finalized:
            return
        self._finalized = True
        for component in self._components:
            component.install(self)

    def error_page(self, page: E) -> E:
        """Decorate `page(request, error) -> Response | None` (may be async): the answer to
        every HTTPError of the app's routes (no route, 405, a handler's, a 500), instead of the
        built-in page. None keeps the built-in one. The response gets the error's status
        unless it sets another, and the error's headers (`Allow`) it does not set itself."""
        self._error_page = page
        return page

    # --- lifecycle -------------------------------------------------------------------------

    def bind_server_state(self, state: ServerState) -> None:
        """Called by `Server.start`: the live connections and counters of this app's server.
        The app is finalized by then, whether or not `startup` ran."""
        self.finalize()
        self.server_state = state
        if self.admin is not None:
            state.opened = {}  # the admin lists connections with their ages

    async def startup(self) -> None:
        self.finalize()
        for hook in self.on_startup:
            result = hook()
            if result is not None:
                await result

    async def shutdown(self) -> None:
        for hook in reversed(self.on_shutdown):
            result = hook()
            if result is not None:
                await result

    def run(self, host: str | None = None, port: int | None = None, **overrides: Any) -> None:
        """Serve this app until SIGINT/SIGTERM (blocking)."""
        from rtserve.logs import setup_logging
        from rtserve.server.listener import serve

        setup_logging()
        settings = copy.deepcopy(self.settings)
        if host is not None:
            settings.host = host
        if port is not None:
            settings.port = port
        for key, value in overrides.items():
            setattr(settings, key, value)
        serve(self, settings)

    # --- helpers for handlers --------------------------------------------------------------

    @property
    def cookie_signer(self) -> CookieSigner:
        if self._signer is None:
            if not self._secrets:
                raise RuntimeError("signed cookies need App(cookie_secret=...)")
            self._signer = CookieSigner(list(self._secrets))
        return self._signer

    def render_template(self, template: str, **context: Any) -> str:
        """Render a Jinja2 template from `template_dir` (needs `pip install rtserve[templates]`)."""
        if self._templates is None:
            try:
                import jinja2
            except ImportError:
                raise RuntimeError(
                    "templates need Jinja2: pip install 'rtserve[templates]'"
                ) from None
            self._templates = jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(self.template_dir)),
                autoescape=jinja2.select_autoescape(default=True),
                enable_async=False,
            )
            self._templates.globals["url_for"] = self.url_for
        return str(self._templates.get_template(template).render(**context))

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """An HTML response rendered from a Jinja2 template."""
        return HTMLResponse(self.render_template(template, **context), status)

    # --- the server's entry points ---------------------------------------------------------

    def wants_stream(self, exchange: Exchange) -> bool:
        head = exchange.head
        try:
            match: Any = self.router.match(head.method, head.path, head.raw_path)
        except HTTPError as error:
            # Kept without its traceback, whose frames hold this exchange: no cycle to collect.
            match = error.with_traceback(None)
        exchange.scope = match
        return type(match) is tuple and match[0].stream

    def dispatch(self, exchange: Exchange) -> asyncio.Task[None] | None:
        # Each request runs in its own copy of the context: context variables a handler sets
        # never leak into the next request, and its Task (if any) goes on in the same copy.
        context = copy_context()
        pending = context.run(self._answer, exchange)
        if pending is None:
            return None
        # The server's loop, which runs this: asking asyncio for it costs a getpid() system
        # call per request on Python 3.11.
        return exchange.state.loop.create_task(pending, context=context)

    def _answer(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Answer now (None) or return the coroutine that finishes answering."""
        match = exchange.scope
        exchange.scope = None  # used up: nothing long-lived (a WebSocket) should keep it
        if type(match) is not tuple:
            request = Request(exchange, self, {})
            return self._send_error(request, match)
        endpoint, params = match
        if endpoint.direct:
            return self._answer_direct(exchange, endpoint.handler)
        request = Request(exchange, self, params)
        try:
            if (
                self.xsrf_cookies
                and exchange.head.method not in _SAFE_METHODS
                and not endpoint.xsrf_exempt
            ):
                self._check_xsrf(request)
            websocket = endpoint.websocket
            if websocket is not None:
                upgrading = accept_websocket(request, endpoint.handler, params, websocket)
                if upgrading is not None:  # the handler's prepare is async
                    return self._upgrade_later(request, upgrading)
                return None
            if endpoint.is_class:
                result: Any = self._run_class(endpoint.handler, request, params)
            elif params:
                result = endpoint.handler(request, **params)
            else:
                result = endpoint.handler(request)
            if type(result) is types.CoroutineType:
                result = first_step(result, exchange.state.loop)
                if type(result) is Suspended:
                    return self._finish_later(request, result)
            return self._send(request, result)
        except Exception as exc:
            return self._on_exception(request, exc)

    def _answer_direct(
        self, exchange: Exchange, handler: Callable[[Exchange], Any]
    ) -> Coroutine[Any, Any, None] | None:
        """`_answer` for a direct endpoint (a mount's): no Request unless something goes wrong."""
        try:
            result = handler(exchange)
            if type(result) is types.CoroutineType:
                result = first_step(result, exchange.state.loop)
                if type(result) is Suspended:
                    return self._finish_later(Request(exchange, self, {}), result)
            if result is None and (exchange.started or exchange.deferred):
                return None
            return self._send(Request(exchange, self, {}), result)
        except Exception as exc:
            return self._on_exception(Request(exchange, self, {}), exc)

    def respond(self, request: Request, response: Response) -> None:
        """Answer `request` now, from outside its handler, as if the handler had returned
        `response` (held in memory): a long poll released by a publication. Its handler must
        then return None."""
        pending = self._send_response(request, response)
        if pending is not None:
            pending.close()
            raise TypeError(f"{type(response).__name__} cannot be sent from outside a handler")

    def respond_shared(self, request: Request, shared: SharedResponse) -> None:
        """`respond()` with a response many requests are answered with as is (the long polls
        one publication releases): gzipped, or not, as `respond()` would, each form made once."""
        if request._xsrf_new:  # a cookie of its own
            self.respond(request, shared.copy())
            return
        gzip_min = self.gzip_min_size
        if gzip_min is None or shared.size < gzip_min:
            answer = shared.plain
        else:
            accepts = _accepts_gzip(request.headers.get("accept-encoding", ""))
            encoded = shared.encoded(accepts)
            if encoded is None:  # the first such client: as `respond()` would answer it
                response = shared.copy()
                _maybe_gzip(request, response)
                encoded = shared.keep_encoded(accepts, response)
            answer = encoded
        request.exchange.respond_prepared(answer)

    async def _upgrade_later(self, request: Request, upgrading: Coroutine[Any, Any, None]) -> None:
        try:
            await upgrading
        except Exception as exc:
            pending = self._on_exception(request, exc)
            if pending is not None:
                await pending

    async def _finish_later(self, request: Request, suspended: Suspended) -> None:
        try:
            result = await suspended.finish()
            pending = self._send(request, result)
        except Exception as exc:
            pending = self._on_exception(request, exc)
        if pending is not None:
            await pending

    async def _run_class(self, cls: type[Handler], request: Request, params: dict[str, Any]) -> Any:
        handler = cls(request, params)
        try:
            try:
                prepared = handler.prepare()
                if inspect.isawaitable(prepared):
                    await prepared
                method = getattr(handler, request.method.lower(), None)
                if method is None and request.method == "HEAD":
                    method = handler.get  # type: ignore[attr-defined]
                result = method(**params) if method is not None else None
                if inspect.isawaitable(result):
                    result = await result
                pending = self._send(request, handler._result(result))
            except Exception as exc:
                pending = self._on_exception(request, exc)
            if pending is not None:
                await pending
        finally:
            finished = handler.on_finish()
            if inspect.isawaitable(finished):
                await finished
        return SENT

    def _send(self, request: Request, result: Any) -> Coroutine[Any, Any, None] | None:
        kind = type(result)
        if kind is str:
            body = result.encode("utf-8")
            headers = _TEXT_HEADERS
        elif kind is dict or kind is list:
            body = dump_json(result)
            headers = _JSON_HEADERS
        elif kind is bytes:
            body = result
            headers = _OCTET_HEADERS
        elif isinstance(result, Response):
            return self._send_response(request, result)
        elif result is None:
            exchange = request.exchange
            if exchange.started or exchange.deferred:
                return None  # the handler answered through the exchange, or will later
            return self._send_response(request, Response(b"", 204))
        elif result is SENT:
            return None
        else:
            raise TypeError(
                f"handler returned {kind.__name__}; return str, bytes, dict, list, a Response "
                "or None"
            )
        gzip_min = self.gzip_min_size
        if request._xsrf_new or (gzip_min is not None and len(body) >= gzip_min):
            content_type = headers[len(b"content-type: ") : -2].decode()
            return self._send_response(request, Response(body, content_type=content_type))
        request.exchange.respond(200, headers, body)
        return None

    def _send_response(
        self, request: Request, response: Response
    ) -> Coroutine[Any, Any, None] | None:
        request._add_xsrf_cookie(response)
        gzip_min = self.gzip_min_size
        if gzip_min is not None and len(response.body) >= gzip_min:
            _maybe_gzip(request, response)
        return response.send(request.exchange)

    def _check_xsrf(self, request: Request) -> None:
        submitted = request.headers.get("x-xsrftoken") or request.headers.get("x-csrftoken")
        if (
            submitted is None
            and not request.exchange.streaming
            and request.content_type.startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            )
        ):
            from rtserve.app.forms import parse_form

            limits = request.settings.limits
            form = parse_form(
                request.content_type,
                request.body,
                max_fields=limits.max_form_fields,
                max_file_size=limits.max_upload_size,
            )
            request._form = form
            value = form.get("_xsrf")
            submitted = value if isinstance(value, str) else None
        if not xsrf_tokens_match(request.cookies.get("_xsrf"), submitted):
            raise HTTPError(403, "XSRF token missing or wrong")

    def _on_exception(self, request: Request, exc: Exception) -> Coroutine[Any, Any, None] | None:
        if isinstance(exc, HTTPError):
            return self._send_error(request, exc)
        log.error("unhandled error in %s %s", request.method, request.target, exc_info=exc)
        trace = "".join(traceback.format_exception(exc)) if request.settings.debug else None
        return self._send_error(request, HTTPError(500), trace)

    def _send_error(
        self, request: Request, error: HTTPError, trace: str | None = None
    ) -> Coroutine[Any, Any, None] | None:
        exchange = request.exchange
        if exchange.started:
            # Too late for an error page: drop the connection before ending the response, so
            # that no last-chunk makes the cut-short body look complete to the client.
            exchange.close()
            exchange.end()
            return None
        if self._error_page is not None:
            try:
                made = self._error_page(request, error)
            except Exception:
                log.exception("the error page failed for %s %s", request.method, request.target)
            else:
                if inspect.isawaitable(made):
                    return self._send_error_page(request, error, trace, made)
                return self._error_page_response(request, error, trace, made).send(exchange)
        return error_response(request, error, trace).send(exchange)

    async def _send_error_page(
        self, request: Request, error: HTTPError, trace: str | None, made: Awaitable[Any]
    ) -> None:
        try:
            page = await made
        except Exception:
            log.exception("the error page failed for %s %s", request.method, request.target)
            page = None
        sending = self._error_page_response(request, error, trace, page).send(request.exchange)
        if sending is not None:
            await sending

    def _error_page_response(
        self, request: Request, error: HTTPError, trace: str | None, page: Any
    ) -> Response:
        """What the app's error page made of `error`, or the built-in page."""
        if page is None:
            return error_response(request, error, trace)
        if not isinstance(page, Response):
            log.error("the error page returned %r, not a Response", type(page).__name__)
            return error_response(request, error, trace)
        if page.status == 200:
            page.status = error.status
        for name, value in error.headers.items():
            if not page.has_header(name):
                page.set_header(name, value)
        return page


class _OwnAnswering:
    """An App's own entry points (its class's: a subclass's overrides included), innermost in
    its middleware stack."""

    __slots__ = ("dispatch", "wants_stream")

    def __init__(self, app: App) -> None:
        cls = type(app)
        self.wants_stream = types.MethodType(cls.wants_stream, app)
        self.dispatch = types.MethodType(cls.dispatch, app)


def _maybe_gzip(request: Request, response: Response) -> None:
    content_type = response.get_header("content-type") or ""
    if not content_type.startswith(_COMPRESSIBLE) or response.has_header("content-encoding"):
        return
    if response.status < 200 or response.status in (204, 206, 304):
        return
    # Compressed or not, this representation depends on Accept-Encoding: tell caches.
    vary = response.get_header("vary")
    if not vary:
        response.set_header("vary", "Accept-Encoding")
    elif not {v.strip().lower() for v in vary.split(",")} & {"accept-encoding", "*"}:
        response.set_header("vary", f"{vary}, Accept-Encoding")
    if not _accepts_gzip(request.headers.get("accept-encoding", "")):
        return
    response.body = gzip.compress(response.body, 6, mtime=0)
    response.set_header("content-encoding", "gzip")


_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def _accepts_gzip(accept_encoding: str) -> bool:
    """True if Accept-Encoding gives gzip (or, failing a gzip entry, `*`) a non-zero q."""
    gzip_q: float | None = None
    star_q: float | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip(" \t").lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip(" \t").lower() == "q":
                value = value.strip(" \t")
                q = float(value) if _QVALUE.fullmatch(value) else 0.0
        if coding == "*":
            star_q = q if star_q is None else star_q
        else:
            gzip_q = q if gzip_q is None else gzip_q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


__all__ = ["HTML", "App"]
