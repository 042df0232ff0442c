"""Logging set-up: structlog, JSON when not on a TTY, configured once per process in ``__main__``."""

from __future__ import annotations

import logging
import sys

import structlog

from proxy import fastjson


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now* (not the stream seen at configure time),
    so a process that swaps its stderr (a test runner's capture, a supervisor) never logs to a closed file."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warn = warning = error = critical = exception = fatal = log = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Configure structlog and stdlib logging once; request ids are bound through contextvars."""
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=fastjson.dumps_str) if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
