"""``nextstate proxy``: read the settings once, configure logging, serve the app under uvicorn.

With ``--workers N`` uvicorn runs N processes on one port; each builds its settings from the
environment (command-line values are passed on as ``NEXTSTATE_*`` variables) and its own app.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from proxy.app import create_app
from proxy.embedded_redis import resolve_redis_url
from proxy.logs import configure_logging
from proxy.settings import ProxySettings

_UVICORN = {"loop": "uvloop", "http": "httptools", "access_log": False, "log_level": "warning", "proxy_headers": False,
            "lifespan": "on", "timeout_keep_alive": 30, "timeout_graceful_shutdown": 10}


# what to mount behind the admin token (the composition root passes the registry's admin app and the
# dashboard; the proxy itself cannot import them)
MountsFactory = Callable[[ProxySettings], list[tuple[str, ASGIApp]]]


def settle_gc() -> None:
    """Keep the cyclic garbage collector off the hot path once start-up is over.

    ``gc.freeze`` moves what start-up created (modules, the app: ~70k objects) out of every later
    collection, and a larger first-generation threshold makes collections rare: request-scoped objects
    die by reference count, so there is little for them to find. Measured at peak (bench/proxy_overhead.py's
    load, 2 cores): collections took ~60 µs of CPU per request before (a full one, 23 ms, every ~600
    requests), ~2 µs after.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def app_from_env(mounts: MountsFactory | None = None) -> ASGIApp:
    """Factory each worker process calls (``uvicorn --factory proxy.server:app_from_env``)."""
    settings = ProxySettings()
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings, mounts=mounts(settings) if mounts else None)
    settle_gc()
    return app


def main(argv: list[str], *, mounts: MountsFactory | None = None,
         factory: str = "proxy.server:app_from_env") -> int:
    """Serve the proxy; with several workers each process builds its app through ``factory``."""
    parser = argparse.ArgumentParser(prog="nextstate proxy", description="Run the recording proxy.")
    parser.add_argument("--host", help="listen address (NEXTSTATE_HOST)")
    parser.add_argument("--port", type=int, help="listen port (NEXTSTATE_PORT)")
    parser.add_argument("--upstream-url", help="OpenAI-compatible upstream base URL (NEXTSTATE_UPSTREAM_URL)")
    parser.add_argument("--workers", type=int, help="proxy processes (NEXTSTATE_WORKERS)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = ProxySettings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    if settings.workers <= 1:
        app = create_app(settings, mounts=mounts(settings) if mounts else None)
        settle_gc()
        uvicorn.run(app, host=settings.host, port=settings.port, **_UVICORN)  # type: ignore[arg-type]
        return 0
    # one embedded Redis for all workers, started here; workers find it through NEXTSTATE_REDIS_URL
    _, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
    for key, value in overrides.items():
        os.environ[f"NEXTSTATE_{key.upper()}"] = str(value)
    try:
        uvicorn.run(factory, factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, **_UVICORN)  # type: ignore[arg-type]
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
