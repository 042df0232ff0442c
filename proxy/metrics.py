"""Prometheus metrics of one proxy app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nextstate_proxy_requests", "Requests served, by route and status.", ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nextstate_proxy_request_seconds", "Total request latency seen by the client.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.policy_requests = Counter(
            "nextstate_proxy_policy_requests", "Chat requests by arm, served version and status.",
            ["arm", "version", "status"], registry=self.registry,
        )
        self.policy_latency = Histogram(
            "nextstate_proxy_policy_request_seconds", "Chat request latency by arm and served version.",
            ["arm", "version"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.overhead = Histogram(
            "nextstate_proxy_overhead_seconds", "Time spent in the proxy, excluding the upstream.", ["route"],
            buckets=_OVERHEAD_BUCKETS, registry=self.registry,
        )
        self.records = Counter(
            "nextstate_proxy_records", "Records by kind and outcome (written, duplicate, spooled, replayed, redacted, expired, dropped, failed).",
            ["kind", "outcome"], registry=self.registry,
        )
        self.spool_pending = Gauge(
            "nextstate_proxy_spool_pending", "1 while the spool holds records not yet replayed.", registry=self.registry,
        )
        self.capture = Gauge(
            "nextstate_proxy_capture_supported", "1 when the upstream returns token ids, 0 when it refused.",
            registry=self.registry,
        )
        self.sessions_closed = Counter(
            "nextstate_proxy_sessions_closed", "Sessions closed by idle timeout.", registry=self.registry,
        )
