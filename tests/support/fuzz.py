"""A generated attack on the proxy from its own OpenAPI document (schemathesis + Hypothesis), and what
every answer must hold: no 5xx but the documented 502/503/504, every 4xx in the OpenAI error shape.

Both modes run for every operation: requests that follow the document and requests that break it
(wrong types, missing fields, stray headers). Used by tests/proxy/test_fuzz.py (a CI-sized count) and
bench/fuzz_proxy.py (the full count, with the proxy's memory watched).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

ALLOWED_5XX = frozenset({502, 503, 504})


@dataclass
class Report:
    """What a run sent and got back."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    """One line per answer that broke a rule (at most 20 kept)."""
    violation_count: int = 0


def violation(status: int, body: bytes) -> str | None:
    """Why an answer breaks the rules, or None."""
    if status >= 500 and status not in ALLOWED_5XX:
        return f"{status} is not a documented 5xx"
    if status >= 400:
        try:
            error = json.loads(body)["error"]
            if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
                return f"{status} error without message/type/param/code: {body[:200]!r}"
        except (ValueError, KeyError, TypeError):
            return f"{status} is not an OpenAI-shaped error: {body[:200]!r}"
    return None


def run(base_url: str, examples_per_operation: int, *, seed: int | None = None,
        on_request: Callable[[Report], None] | None = None) -> Report:
    """Attack every operation of the proxy at ``base_url`` with ``examples_per_operation`` generated
    requests in each mode; returns the report (it never raises on a violation, so all are counted)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    report = Report()
    session = requests.Session()
    settings = hypothesis.settings(
        max_examples=examples_per_operation, deadline=None, database=None, derandomize=seed is not None,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck), verbosity=hypothesis.Verbosity.quiet,
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def attack(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, session=session, timeout=30)
                report.requests += 1
                report.statuses[response.status_code] += 1
                problem = violation(response.status_code, response.content)
                if problem is not None:
                    report.violation_count += 1
                    if len(report.violations) < 20:
                        report.violations.append(f"{case.method} {case.path}: {problem}")
                if on_request is not None:
                    on_request(report)

            try:
                attack()
            except hypothesis.errors.Unsatisfiable:  # nothing to break in an operation without inputs
                continue
    session.close()
    return report
