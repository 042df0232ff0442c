"""The dashboard: a page and its JSON endpoints, mounted by the proxy at ``/dashboard`` behind the admin token.

The page (``registry/static``: HTML, JS and CSS shipped in the package, no CDN) draws its charts in
the browser from ``api/*``: reward rate per version over time, the running canary's arms, the
learning scopes (each one's stable, canary and versions), the registry timeline, queue and stream
depths, and recent labeled samples with their hints.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from proxy.embedded_redis import resolve_redis_url
from proxy.redis_connect import CLUSTER_UNREACHABLE, connect, connect_queues
from proxy.settings import CommonSettings
from registry import observe

STATIC = Path(__file__).parent / "static"
MAX_SAMPLES = 200


def _error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw)  # ValueError -> 400 in _endpoint
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


def _sample_row(sample: Any) -> dict[str, Any]:
    """A recent sample as the page shows it: the last user message, the answer, the label and its hint."""
    last_user = next((m for m in reversed(sample.messages) if m.get("role") == "user"), {})
    content = last_user.get("content")
    answer = sample.response.get("content")
    return {
        "turn_id": sample.turn_id, "created_at": sample.created_at, "version": observe.version_of(sample),
        "cls": sample.cls, "reward": sample.reward, "agreement": sample.agreement, "votes": sample.votes,
        "source": sample.source, "hint": sample.hint, "hard": sample.hard, "revision": sample.revision,
        "prompt": content if isinstance(content, str) else None,
        "answer": answer if isinstance(answer, str) else None,
    }


class Views:
    """The JSON views, each a plain function of a synchronous Redis client (run in a thread)."""

    def __init__(self, connect: Callable[[], redis.Redis], sample_window: int,
                 connect_queues: Callable[[], redis.Redis] | None = None) -> None:
        self.connect = connect
        self.connect_queues = connect_queues
        self.sample_window = sample_window
        self._client: redis.Redis | None = None
        self._queues: redis.Redis | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        """Connected on first use: a mounted app has no lifespan, and the proxy may start Redis first."""
        with self._lock:
            if self._client is None:
                self._client = self.connect()
            return self._client

    @property
    def queue_client(self) -> redis.Redis:
        """Where the RQ queues are: the data's Redis unless they have one of their own (NEXTSTATE_QUEUE_URL)."""
        if self.connect_queues is None:
            return self.client
        with self._lock:
            if self._queues is None:
                self._queues = self.connect_queues()
            return self._queues

    def close(self) -> None:
        with self._lock:
            for client in (self._client, self._queues):
                if client is not None:
                    client.close()
            self._client = self._queues = None

    def summary(self, request: Request) -> dict[str, Any]:
        table = observe.routing_table(self.client)
        canary = observe.canary_state(self.client)
        return {
            "now": time.time(),
            "routing": table.model_dump() if table else None,
            "aliases": observe.aliases(self.client),
            "canary": canary.model_dump() if canary else None,
            "scopes": observe.scopes(self.client),
        }

    def rewards(self, request: Request) -> dict[str, Any]:
        width = _int_param(request, "width", 0, 0, 30 * 86400)  # 0 = chosen from the time span
        samples = observe.recent_samples(self.client, self.sample_window)
        return observe.reward_series(samples, width or None)

    def canary(self, request: Request) -> dict[str, Any]:
        samples = observe.recent_samples(self.client, self.sample_window)
        return {"canary": observe.canary_view(self.client, samples)}

    def timeline(self, request: Request) -> dict[str, Any]:
        count = _int_param(request, "events", 200, 1, 10_000)
        return {
            "versions": [info.model_dump() for info in observe.versions(self.client)],
            "aliases": observe.aliases(self.client),
            "events": [{"id": entry_id, **event.model_dump()} for entry_id, event in observe.events(self.client, count)],
        }

    def queues(self, request: Request) -> dict[str, Any]:
        return {"queues": observe.queue_stats(self.queue_client), "streams": observe.stream_stats(self.client)}

    def samples(self, request: Request) -> dict[str, Any]:
        limit = _int_param(request, "limit", 25, 1, MAX_SAMPLES)
        recent = observe.recent_samples(self.client, max(limit * 4, 100))
        return {"samples": [_sample_row(s) for s in reversed(recent[-limit:])]}


def _endpoint(view: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(view, request))
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error")
        except (redis.RedisError, *CLUSTER_UNREACHABLE) as exc:
            return _error(503, f"redis unavailable: {exc}", "service_unavailable", code="redis_unavailable")

    return endpoint


async def page(request: Request) -> HTMLResponse:
    """The page, with a ``<base>`` at the mount point so that relative asset and API URLs resolve."""
    base = html.escape(request.scope.get("root_path", "").rstrip("/") + "/", quote=True)
    text = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{base}}", base)
    return HTMLResponse(text, headers={"cache-control": "no-store"})


def create_dashboard(client: redis.Redis | Callable[[], redis.Redis], *, sample_window: int = 5000,
                     queues: Callable[[], redis.Redis] | None = None) -> Starlette:
    """The dashboard app on a Redis client (or a function making one on first use); ``queues`` makes the
    client of the RQ queues when they are not on that Redis.

    The composition root mounts it at ``/dashboard`` on the proxy, behind the admin token.
    """
    if callable(client):
        views = Views(client, sample_window, queues)
    else:  # a client (plain or cluster) shared with the caller
        shared = client
        views = Views(lambda: shared, sample_window, queues)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no dashboard route {request.url.path}", "invalid_request_error", code="not_found")

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/summary", _endpoint(views.summary), methods=["GET"]),
        Route("/api/rewards", _endpoint(views.rewards), methods=["GET"]),
        Route("/api/canary", _endpoint(views.canary), methods=["GET"]),
        Route("/api/timeline", _endpoint(views.timeline), methods=["GET"]),
        Route("/api/queues", _endpoint(views.queues), methods=["GET"]),
        Route("/api/samples", _endpoint(views.samples), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.close = views.close  # the owner closes the Redis client (a mounted app gets no lifespan)
    return app


def dashboard_for(settings: CommonSettings, *, sample_window: int = 5000) -> Starlette:
    """The dashboard on the Redis the settings name (the embedded one when none is set: by the time
    the first page is requested the proxy's lifespan has started it, and this reuses it)."""

    def open_client() -> redis.Redis:
        url, _ = resolve_redis_url(settings.redis_url, settings.home_dir())
        return connect(url, socket_timeout=5, socket_connect_timeout=5)

    def open_queues() -> redis.Redis:
        url, _ = resolve_redis_url(settings.redis_url, settings.home_dir())
        return connect_queues(url, settings.queue_url, socket_timeout=5, socket_connect_timeout=5)

    return create_dashboard(open_client, sample_window=sample_window, queues=open_queues)
