"""Fault tests: real processes and a real Redis, stopped, killed and damaged on purpose; the proxy's
fixtures; and the figures printed at the end of the run (faults injected, client requests failed,
records lost or duplicated)."""

from __future__ import annotations

import pytest

from tests.proxy.conftest import fake, start_proxy, upstream_url  # noqa: F401  (fixtures, used by name)
from tests.support import figures

SUITE = "faults"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures.report(SUITE, terminalreporter)
