"""``nextstate proxy``: read the settings once, configure logging, serve the app under uvicorn.

With ``--workers N`` uvicorn runs N processes on one port; each builds its settings from the
environment (command-line values are passed on as ``NEXTSTATE_*`` variables) and its own app.
"""

from __future__ import annotations

import argparse
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


def app_from_env(mounts: MountsFactory | None = None) -> ASGIApp:
    """Factory each worker process calls (``uvicorn --factory proxy.server:app_from_env``)."""
    settings = ProxySettings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings, mounts=mounts(settings) if mounts else None)


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
