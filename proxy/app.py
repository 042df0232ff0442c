"""The app factory: routes, admin mounts behind the token guard, and a lifespan that owns every client.

The lifespan opens the upstream client, the Redis client, the spool and the recorder, and runs the
background tasks (recorder, routing-table refresher, idle-session sweeper). A background task that
dies is logged, counted and reported by ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import structlog
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import chat, responses, routes
from proxy.access import ClientAccess, parse_keys
from proxy.embedded_redis import resolve_redis_url
from proxy.errors import BadRequest, HeadersTooLarge, MethodNotAllowed, NotFound, ProxyError, error_response
from proxy.metrics import Metrics
from proxy.middleware import AdminGuard, CanonicalLog
from proxy.recorder import REDIS_DOWN, Recorder
from proxy.records import UPSTREAM_OUTCOMES_KEY
from proxy.redact import Redactor
from proxy.redis_connect import connect_async
from proxy.routing import RoutingRefresher
from proxy.settings import ProxySettings
from proxy.spool import Spool, UnwritableSpool
from proxy.state import ProxyState
from proxy.store import Store
from proxy.targets import has_dot_segment
from proxy.tasks import cancelling, stop
from proxy.upstream import Upstream

log = structlog.get_logger("proxy.app")



async def sweep_sessions(state: ProxyState) -> None:
    """Close idle sessions every ``sweep_interval_s`` (any replica may; each session closes once)."""
    settings = state.settings
    while not cancelling():
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            closed = await state.store.sweep_idle(settings.session_idle_timeout_s)
            if closed:
                state.metrics.sessions_closed.inc(closed)
                log.info("sessions_closed_idle", count=closed)
        except REDIS_DOWN as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.info("sweep_skipped_redis_unavailable", error=repr(exc))


async def flush_outcomes(state: ProxyState, interval_s: float = 1.0) -> None:
    """Add the per-version upstream outcome counts to Redis every second (the canary's error rate)."""
    while not cancelling():
        await asyncio.sleep(interval_s)
        pending, state.outcomes = state.outcomes, Counter()
        if not pending:
            continue
        try:
            async with state.redis.pipeline(transaction=False) as pipe:
                for name, count in pending.items():
                    pipe.hincrby(UPSTREAM_OUTCOMES_KEY, name, count)
                await pipe.execute()
        except REDIS_DOWN as exc:
            state.outcomes.update(pending)  # keep them for the next try
            if cancelling():
                raise asyncio.CancelledError from exc


def _watch(state: ProxyState, name: str, task: asyncio.Task[None]) -> None:
    def done(finished: asyncio.Task[None]) -> None:
        if finished.cancelled():
            return
        state.failed_tasks.append(name)
        log.error("background_task_stopped", task=name, error=repr(finished.exception()))

    task.add_done_callback(done)
    state.tasks.append(task)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(NotFound(f"no route {request.url.path}"))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left before its body arrived: nothing to answer (the response goes nowhere)."""
    request.scope.setdefault("nextstate.log", {})["error"] = "client_disconnected"
    return Response(status_code=400)


async def _method_not_allowed(request: Request, exc: Exception | None) -> Response:
    return error_response(MethodNotAllowed(f"method {request.method} not allowed on {request.url.path}"))


async def serve_chat(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/chat/completions`` as a plain ASGI app; an unexpected error is an OpenAI-shaped 500."""
    try:
        response = await chat.chat_completions(scope, receive)
    except chat.ClientGone:
        scope.setdefault("nextstate.log", {})["error"] = "client_disconnected"
        return
    except Exception as exc:
        log.exception("chat_handler_failed")
        scope.setdefault("nextstate.log", {})["error"] = "internal_error"
        response = error_response(ProxyError(f"internal error in the proxy ({exc.__class__.__name__})",
                                             code="internal_error"))
    await response(scope, receive, send)


class _ChatRoute:
    """The chat endpoint as an ASGI app (a class, so Starlette's router does not wrap it as a request handler)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_chat(scope, receive, send)


# the API's resources, also served without the ``/v1`` prefix (a client whose base URL lacks it)
_RESOURCES = frozenset({"chat", "completions", "models", "embeddings", "responses", "moderations", "audio", "images",
                        "files", "uploads", "batches", "feedback"})


def _refused_target(scope: Scope, max_header_bytes: int) -> ProxyError | None:
    """Why a request is refused before anything routes on it: headers too large, a dot-segment in its path."""
    if sum(len(name) + len(value) for name, value in scope["headers"]) > max_header_bytes:
        return HeadersTooLarge(f"request headers are larger than {max_header_bytes} bytes")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    if has_dot_segment(raw_path.decode("latin-1")) or has_dot_segment(scope["path"]):
        return BadRequest("request paths may not hold '.' or '..' segments", code="invalid_path")
    return None


class ChatFastPath:
    """``POST /v1/chat/completions`` straight to its handler; every other request goes through the app.

    The hot path skips Starlette's error and exception middlewares, its router and its request and
    response objects (about a tenth of the proxy's CPU per chat request in a profile at 300 req/s).
    A path to one of the API's resources without the ``/v1`` prefix is served as if it had it, and one
    of the proxy's own paths with a trailing slash as if it had none. Every request is first held to the
    header size bound and refused with a dot-segment in its path (proxy.targets), before any decision.
    """

    def __init__(self, app: ASGIApp, max_header_bytes: int = 64 * 1024) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (refused := _refused_target(scope, self.max_header_bytes)) is not None:
            scope.setdefault("nextstate.log", {})["error"] = refused.code
            await error_response(refused)(scope, receive, send)
            return
        path = scope["path"]
        if not path.startswith("/v1/") and path.split("/", 2)[1] in _RESOURCES:
            path = scope["path"] = "/v1" + path
            if scope.get("raw_path"):
                scope["raw_path"] = b"/v1" + scope["raw_path"]
        if path.endswith("/") and path.rstrip("/") in _OWN:  # "/v1/chat/completions/" is still the proxy's
            path = scope["path"] = path.rstrip("/")
            scope["raw_path"] = path.encode()
        if path != "/v1/chat/completions" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        await serve_chat(scope, receive, send)


ROUTES = [
    Route("/v1/chat/completions", _ChatRoute(), methods=["POST"]),
    Route("/v1/completions", routes.completions, methods=["POST"]),
    Route("/v1/responses", responses.responses, methods=["POST"]),
    Route("/v1/models", routes.models, methods=["GET"]),
    Route("/v1/feedback", routes.feedback, methods=["POST"]),
    Route("/healthz", routes.healthz, methods=["GET"]),
    Route("/readyz", routes.readyz, methods=["GET"]),
    Route("/metrics", routes.metrics, methods=["GET"]),
    Route("/openapi.json", routes.openapi, methods=["GET"]),
]
_OWN = frozenset(route.path for route in ROUTES)


async def _passthrough(request: Request) -> Response:
    """Every other ``/v1/…`` path goes upstream; one of the proxy's own with another method is a 405."""
    if request.url.path in _OWN:
        return await _method_not_allowed(request, None)
    return await routes.passthrough(request)


_EXPOSED = ("x-nextstate-turn-id", "x-nextstate-session-id", "x-nextstate-version", "x-nextstate-arm",
            "x-nextstate-overhead-ms", "x-request-id", "retry-after")
PASSTHROUGH = Route("/v1/{path:path}", _passthrough, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])


def create_app(settings: ProxySettings, *, mounts: list[tuple[str, ASGIApp]] | None = None) -> ASGIApp:
    """Build the proxy app; ``mounts`` (e.g. ``("/admin", app)``) are served behind the admin token."""
    metrics = Metrics()
    # what a mounted app opens (Redis, HTTP clients) is closed by its ``state.close``, when it has one
    closers: list[Callable[[], object]] = [
        close for _, mounted in mounts or []
        if callable(close := getattr(getattr(mounted, "state", None), "close", None))
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, ProxyState]]:
        redis_url, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
        redis_client = connect_async(
            redis_url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
        )
        upstream = Upstream.from_settings(settings)
        await upstream.open()
        store = Store(redis_client, ttl_s=settings.turn_ttl_s, session_ttl_s=settings.session_ttl_s)
        try:
            spool = Spool.claim(settings.spool_path())
            orphans = Spool.orphans(settings.spool_path())
        except OSError as exc:  # serve anyway: records are dropped (and counted) only while Redis is down
            log.error("spool_unavailable", error=repr(exc))
            spool, orphans = UnwritableSpool(settings.spool_dir or settings.home_dir() / "spool", exc), []
        recorder = Recorder(store, spool, metrics, replay_interval_s=settings.replay_interval_s, orphans=orphans,
                            gather_s=settings.record_gather_ms / 1000, redactor=redactor,
                            retention_s=settings.retention_days * 86400)
        refresher = RoutingRefresher(redis_client, settings.routing_refresh_s)
        with contextlib.suppress(Exception):  # first load before serving; the refresher retries
            await refresher.refresh()
        state = ProxyState(settings, upstream, redis_client, store, recorder, refresher, metrics)
        _watch(state, "recorder", asyncio.create_task(recorder.run()))
        _watch(state, "routing", asyncio.create_task(refresher.run()))
        _watch(state, "sweeper", asyncio.create_task(sweep_sessions(state)))
        _watch(state, "outcomes", asyncio.create_task(flush_outcomes(state)))
        log.info("proxy_started", upstream=settings.upstream_url, redis=redis_url, spool=str(spool.path))
        try:
            yield {"proxy": state}
        finally:
            with contextlib.suppress(TimeoutError):
                await recorder.drain(timeout=5.0)
            await stop(state.tasks)
            spool.close()
            for orphan in recorder.orphans:
                orphan.close()
            await upstream.close()
            await redis_client.aclose()
            for close_mount in closers:  # a mounted app gets no lifespan: its clients are closed here
                close_mount()
            if embedded is not None:
                embedded.stop()

    app_routes: list[Route | Mount] = list(ROUTES)
    prefixes = []
    for prefix, mounted in mounts or []:
        app_routes.append(Mount(prefix, app=AdminGuard(mounted, settings.admin_token)))
        prefixes.append(prefix)
    app_routes.append(PASSTHROUGH)
    app = Starlette(routes=app_routes, lifespan=lifespan, exception_handlers={
        404: _not_found, 405: _method_not_allowed, chat.ClientGone: _client_gone,
    })
    paths = {route.path for route in ROUTES}
    served: ASGIApp = ChatFastPath(app, settings.max_header_bytes)
    redactor = Redactor(settings.redact, settings.redact_hook)  # built at start: a bad setting stops the proxy
    if keys := parse_keys(settings.api_keys, settings.api_key_rpm):  # read at start: a bad entry stops the proxy
        served = ClientAccess(served, keys, tuple(prefixes))
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:  # a browser client: preflights answered, the proxy's own response headers readable
        served = CORSMiddleware(served, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                                expose_headers=_EXPOSED, max_age=600)
    return CanonicalLog(served, metrics, paths, tuple(prefixes))
