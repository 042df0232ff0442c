"""Security tests: the proxy's fixtures, and the figures printed at the end of the run."""

from __future__ import annotations

import pytest

from tests.proxy.conftest import fake, start_proxy, upstream_url  # noqa: F401  (fixtures, used by name)
from tests.support import figures

SUITE = "security"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures.report(SUITE, terminalreporter)
