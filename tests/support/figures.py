"""Figures a test suite reports at the end of its run (faults injected, requests failed, records lost…).

Tests add to a named suite's tally; the suite's ``conftest.py`` prints the tally in pytest's terminal
summary, so the numbers a goal names are on screen after every run, next to the tests that made them.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

_TALLIES: defaultdict[str, Counter[str]] = defaultdict(Counter)


def add(suite: str, figure: str, amount: int = 1) -> None:
    """Add ``amount`` to ``figure`` of ``suite`` (0 still makes the figure appear)."""
    _TALLIES[suite][figure] += amount


def report(suite: str, terminal: pytest.TerminalReporter) -> None:
    tally = _TALLIES.get(suite)
    if not tally:
        return
    terminal.section(f"{suite} figures")
    for figure, value in tally.items():
        terminal.write_line(f"{figure:<48} {value}")
