"""``nextstate proxy``: read the settings once, configure logging, serve the app under uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from proxy.app import create_app
from proxy.logs import configure_logging
from proxy.settings import ProxySettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nextstate proxy", description="Run the recording proxy.")
    parser.add_argument("--host", help="listen address (NEXTSTATE_HOST)")
    parser.add_argument("--port", type=int, help="listen port (NEXTSTATE_PORT)")
    parser.add_argument("--upstream-url", help="OpenAI-compatible upstream base URL (NEXTSTATE_UPSTREAM_URL)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = ProxySettings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        access_log=False, log_level="warning", lifespan="on", timeout_keep_alive=30,
    )
    return 0
