"""The Prometheus exporter of the stack's shared state, read from Redis on every scrape.

Streams (length, consumer-group lag and pending), RQ queues (depths, failed registries, workers),
labeled samples (reward rate per version, judge latency and vote agreement over the recent window),
the registry (versions per state, aliases, decisions and gate verdicts from the audit log), the
personal learning scopes (how many, their versions by state, stables and canaries, summed), the
running canary's arms, and upstream outcomes per version. ``python -m registry.exporter``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pydantic import Field
from rq import Queue, Worker

from proxy.redis_connect import CLUSTER_UNREACHABLE, connect, connect_queues, queue_settings_problem
from proxy.settings import CommonSettings
from registry import observe
from registry.records import EVENTS_STREAM, UPSTREAM_OUTCOMES_KEY, AuditEvent

log = structlog.get_logger("registry.exporter")
QUANTILES = (0.5, 0.9, 0.99)


class ExporterSettings(CommonSettings):
    """Settings of ``python -m registry.exporter``."""

    exporter_host: str = Field(default="127.0.0.1", description="Address the exporter listens on.")
    exporter_port: int = Field(default=9108, description="Port of the exporter's /metrics.")
    exporter_sample_window: int = Field(default=5000, description="Recent samples that reward, judge and canary figures cover.")


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of a non-empty sequence (``q`` in [0, 1])."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def decision_label(event: AuditEvent) -> tuple[str, str]:
    """(kind, verdict) of an audit event; verdict is pass/fail for gate verdicts, empty otherwise."""
    if event.kind == "gate_verdict":
        gate = event.evidence.get("gate") or {}
        passed = gate.get("passed", event.evidence.get("passed"))
        return event.kind, "pass" if passed else "fail"
    return event.kind, ""


class AuditCounts:
    """Decision counts read incrementally from the append-only audit log (each event counted once)."""

    def __init__(self) -> None:
        self.last_id = "0-0"
        self.counts: Counter[tuple[str, str]] = Counter()

    def update(self, client: redis.Redis, batch: int = 1000) -> Counter[tuple[str, str]]:
        while True:
            entries = client.xrange(EVENTS_STREAM, min=f"({self.last_id}", count=batch)
            for entry_id, fields in entries:
                self.counts[decision_label(AuditEvent.model_validate_json(fields[b"event"]))] += 1
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if len(entries) < batch:
                return self.counts


class StackCollector(Collector):
    """Yields every metric family from a fresh read of Redis; ``nextstate_exporter_up`` 0 when it fails."""

    def __init__(self, client: redis.Redis, sample_window: int = 5000, queues: redis.Redis | None = None) -> None:
        self.client = client
        self.queues = queues if queues is not None else client  # RQ's Redis (NEXTSTATE_QUEUE_URL), else the data's
        self.sample_window = sample_window
        self.audit = AuditCounts()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("nextstate_exporter_up", "1 when the last scrape could read Redis.")
        try:
            families = list(self._families())
        except (redis.RedisError, *CLUSTER_UNREACHABLE) as exc:
            log.warning("scrape_failed", error=repr(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        yield from self._streams()
        yield from self._queues()
        samples = observe.recent_samples(self.client, self.sample_window)
        yield from self._samples(samples)
        yield from self._registry()
        yield from self._personal()
        yield from self._canary(samples)
        yield from self._upstream()

    def _streams(self) -> Iterator[Metric]:
        length = GaugeMetricFamily("nextstate_stream_length", "Entries in a Redis stream.", labels=["stream"])
        lag = GaugeMetricFamily("nextstate_stream_consumer_lag", "Entries not yet delivered to a consumer group.",
                                labels=["stream", "group"])
        pending = GaugeMetricFamily("nextstate_stream_consumer_pending",
                                    "Entries delivered to a consumer group and not yet acknowledged.", labels=["stream", "group"])
        for stream in observe.stream_stats(self.client):
            length.add_metric([stream["stream"]], stream["length"])
            for group in stream["groups"]:
                if group["lag"] is not None:
                    lag.add_metric([stream["stream"], group["group"]], group["lag"])
                pending.add_metric([stream["stream"], group["group"]], group["pending"])
        yield from (length, lag, pending)

    def _queues(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("nextstate_rq_jobs", "RQ jobs per queue and registry (queued, started, failed, ...).",
                                 labels=["queue", "state"])
        workers = GaugeMetricFamily("nextstate_rq_workers", "RQ workers listening on a queue.", labels=["queue"])
        for queue in observe.queue_stats(self.queues):
            for state in ("queued", "started", "failed", "deferred", "scheduled", "finished"):
                jobs.add_metric([queue["queue"], state], queue[state])
            workers.add_metric([queue["queue"]], Worker.count(connection=self.queues, queue=Queue(queue["queue"], connection=self.queues)))
        yield from (jobs, workers)

    def _samples(self, samples: Sequence[Any]) -> Iterator[Metric]:
        counts = GaugeMetricFamily("nextstate_samples_window", "Labeled turns in the recent window by serving version and label.",
                                   labels=["version", "label"])
        rate = GaugeMetricFamily("nextstate_reward_rate", "Share of +1 among rewarded turns in the recent window.",
                                 labels=["version"])
        by_version: dict[str, Counter[str]] = {}
        for sample in samples:
            by_version.setdefault(observe.version_of(sample), Counter())[sample.cls] += 1
        for version, tally in sorted(by_version.items()):
            for label in ("prefer", "avoid", "observation"):
                counts.add_metric([version, label], tally[label])
            value = observe.reward_rate(tally["prefer"], tally["avoid"])
            if value is not None:
                rate.add_metric([version], value)
        latency = GaugeMetricFamily("nextstate_judge_latency_seconds", "Judge wall time per labeled turn, recent window.",
                                    labels=["quantile"])
        agreement = GaugeMetricFamily("nextstate_judge_vote_agreement_ratio",
                                      "Share of judge votes agreeing with the majority, recent window.", labels=["quantile"])
        latencies = [ms / 1000 for s in samples if (ms := observe.judge_latency_ms(s)) is not None]
        agreements = [s.agreement for s in samples if s.votes]
        for q in QUANTILES:
            if latencies:
                latency.add_metric([str(q)], quantile(latencies, q))
            if agreements:
                agreement.add_metric([str(q)], quantile(agreements, q))
        hard = GaugeMetricFamily("nextstate_samples_hard_window", "Hard cases (for the strong judge) in the recent window.")
        hard.add_metric([], sum(1 for s in samples if s.hard))
        yield from (counts, rate, latency, agreement, hard)

    def _registry(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("nextstate_registry_versions", "Adapter versions by state.", labels=["state"])
        tally = Counter(info.state for info in observe.versions(self.client))
        for state in ("candidate", "gated_pass", "gated_fail", "canary", "promoted", "rolled_back", "rejected"):
            states.add_metric([state], tally[state])
        aliases = GaugeMetricFamily("nextstate_registry_alias_info", "1 for the version each alias names.",
                                    labels=["alias", "version"])
        for alias, version in sorted(observe.aliases(self.client).items()):
            if version:
                aliases.add_metric([alias, version], 1)
        decisions = CounterMetricFamily("nextstate_registry_decisions", "Registry decisions from the audit log, by kind.",
                                        labels=["kind"])
        gates = CounterMetricFamily("nextstate_gate_verdicts", "Sacred gate verdicts.", labels=["verdict"])
        counts = self.audit.update(self.client)
        by_kind: Counter[str] = Counter()
        for (kind, _verdict), n in counts.items():
            by_kind[kind] += n
        for kind in sorted(set(by_kind) | {"promoted", "rolled_back", "rejected", "canary_started", "gate_verdict"}):
            decisions.add_metric([kind], by_kind[kind])
        for verdict in ("pass", "fail"):
            gates.add_metric([verdict], counts[("gate_verdict", verdict)])
        yield from (states, aliases, decisions, gates)

    def _personal(self) -> Iterator[Metric]:
        tally = observe.personal_tally(self.client)
        scopes = GaugeMetricFamily("nextstate_personal_scopes", "Personal learning scopes with a lineage.")
        scopes.add_metric([], tally.scopes)
        read = GaugeMetricFamily("nextstate_personal_scopes_read", "Personal scopes the counts below were summed over.")
        read.add_metric([], tally.read)
        states = GaugeMetricFamily("nextstate_personal_versions", "Adapter versions of the personal scopes, by state.",
                                   labels=["state"])
        for state in ("candidate", "gated_pass", "gated_fail", "canary", "promoted", "rolled_back", "rejected"):
            states.add_metric([state], tally.states[state])
        stables = GaugeMetricFamily("nextstate_personal_stables", "Personal scopes served a stable of their own.")
        stables.add_metric([], tally.stables)
        canaries = GaugeMetricFamily("nextstate_personal_canaries", "Personal scopes with a canary running.")
        canaries.add_metric([], tally.canaries)
        yield from (scopes, read, states, stables, canaries)

    def _canary(self, samples: Sequence[Any]) -> Iterator[Metric]:
        view = observe.canary_view(self.client, samples)
        fraction = GaugeMetricFamily("nextstate_canary_fraction", "Traffic share of the running canary (0 = none).")
        fraction.add_metric([], view["fraction"] if view else 0.0)
        yield fraction
        if view is None:
            return
        info = GaugeMetricFamily("nextstate_canary_info", "1 for the running canary and the version it is compared with.",
                                 labels=["version", "stable", "step"])
        info.add_metric([view["version"], view["stable_at_start"] or observe.BASE, str(view["step"])], 1)
        arm_samples = GaugeMetricFamily("nextstate_canary_samples", "Labeled turns per canary arm since the canary started.",
                                        labels=["arm", "label"])
        arm_rate = GaugeMetricFamily("nextstate_canary_reward_rate", "Reward rate per canary arm since it started.",
                                     labels=["arm", "bound"])
        for arm, stats in view["arms"].items():
            for label in ("prefer", "avoid", "observation"):
                arm_samples.add_metric([arm, label], stats[label])
            for bound, key in (("estimate", "rate"), ("low", "low"), ("high", "high")):
                if stats[key] is not None:
                    arm_rate.add_metric([arm, bound], stats[key])
        difference = GaugeMetricFamily(
            "nextstate_canary_rate_difference", "Reward rate of canary minus stable, and the controller's "
            "anytime-valid interval bounds.", labels=["bound"])
        if view["difference"] is not None:
            difference.add_metric(["estimate"], view["difference"])
        difference.add_metric(["low"], view["interval"][0])
        difference.add_metric(["high"], view["interval"][1])
        age = GaugeMetricFamily("nextstate_canary_started_timestamp_seconds", "When the running canary started.")
        age.add_metric([], view["started_at"])
        yield from (info, arm_samples, arm_rate, difference, age)

    def _upstream(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily("nextstate_upstream_outcomes", "Upstream outcomes per served version (from the proxy).",
                                       labels=["version", "outcome"])
        for field, value in sorted(self.client.hgetall(UPSTREAM_OUTCOMES_KEY).items()):
            version, _, outcome = observe.as_text(field).rpartition(":")
            outcomes.add_metric([observe.version_label(version), outcome], float(value))
        yield outcomes


def build_registry(client: redis.Redis, sample_window: int = 5000, queues: redis.Redis | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StackCollector(client, sample_window, queues))
    return registry


def main(argv: list[str] | None = None) -> int:
    from proxy.embedded_redis import resolve_redis_url
    from proxy.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m registry.exporter", description=__doc__)
    parser.add_argument("--host", dest="exporter_host", help="listen address (NEXTSTATE_EXPORTER_HOST)")
    parser.add_argument("--port", dest="exporter_port", type=int, help="listen port (NEXTSTATE_EXPORTER_PORT)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = ExporterSettings(**{k: v for k, v in vars(args).items() if v is not None})
    configure_logging(settings.log_level, settings.log_json)
    if problem := queue_settings_problem(settings.redis_url, settings.queue_url):
        print(f"nextstate exporter: {problem}", file=sys.stderr)
        return 2
    url, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
    client = connect(url, socket_timeout=5, socket_connect_timeout=5)
    queues = connect_queues(url, settings.queue_url, socket_timeout=5, socket_connect_timeout=5)
    server, thread = start_http_server(settings.exporter_port, settings.exporter_host,
                                       registry=build_registry(client, settings.exporter_sample_window, queues))
    log.info("exporter_started", host=settings.exporter_host, port=settings.exporter_port, redis=url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    client.close()
    queues.close()
    if embedded is not None:
        embedded.stop()
    log.info("exporter_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
