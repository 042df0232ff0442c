"""The continuous learner: train whenever a batch of one scope's samples waits; export Prometheus metrics.

A sample trained into a candidate that will never reach users — the gate failed it, or its lineage was
rejected or rolled back by the canary — is not lost with it: it joins the scope's next rounds again (up
to ``learner_retries`` more times), beside newer evidence. The user's reaction is as true as it was; only
that update of the model was not kept. What the lineage that will reach users already holds is skipped
(``learner.data.select``), and a sample deleted since (``nextstate forget``, retention) is never trained
again.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

from learner.data import Entry, by_scope, entry_scope, lineage_sample_ids
from learner.learn import EXIT_PUBLISHED, Learner, RoundOutcome, log
from registry.lineage import training_parent
from registry.records import stream_id


class Metrics:
    """Prometheus metrics of the continuous learner (own registry, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("nextstate_learner_rounds", "Training rounds by outcome", ["status"], registry=self.registry)
        self.samples = Counter("nextstate_learner_samples", "Samples trained on", registry=self.registry)
        self.recalled = Counter("nextstate_learner_recalled_samples", "Samples trained again after their candidate "
                                "was gate-failed, rejected or rolled back", registry=self.registry)
        self.tokens = Counter("nextstate_learner_tokens", "Tokens processed in training", registry=self.registry)
        self.last = Gauge("nextstate_learner_last", "Metrics of the last round", ["metric"], registry=self.registry)
        self.pending = Gauge("nextstate_learner_pending_samples", "Trainable samples waiting", registry=self.registry)

    def observe(self, outcome: RoundOutcome) -> None:
        self.rounds.labels(outcome.status).inc()
        if outcome.result is not None:
            m = outcome.result.metrics
            self.samples.inc(m["samples"])
            self.tokens.inc(m["tokens"])
            for key in ("loss", "reward_mean", "kl_base", "kl_parent", "entropy", "clip_fraction", "tokens_per_s", "wall_seconds"):
                self.last.labels(key).set(m[key])


def recall(learner: Learner, scope: str, batch: list[Entry]) -> list[Entry]:
    """Trained entries of ``scope`` that may join ``batch``'s round again, newest first, so that the round holds
    at most two batches' worth (``round`` skips those its lineage holds). The round trains them in one batch
    (``Learner.round``'s ``one_batch``): recalled samples make its batch larger, not its steps more. Trained
    again offline (``bench/replay_rounds.py``: five eight-sample rounds of a one-word user's run, three seeds
    each), six steps (two batches of three) passed the gate 7 times in 15, refused for facts they lost (fresh
    answers' facts 0.82 on average against the parent's 0.87); three steps over the same samples passed 12
    times in 15 (facts 0.90). They learned less per round (one-word answers 0.24 -> 0.45 instead of 0.65),
    which the next round, trained on top of a candidate that reached the user, carries on."""
    limit, exclude = learner.settings.learner_retries, {e.entry_id for e in batch}
    again = [e for e in reversed(learner.trained.values())
             if entry_scope(e) == scope and e.entry_id not in exclude and learner.attempts.get(e.entry_id, 0) <= limit]
    registry = learner.registry_for(scope)
    parent = training_parent(registry.versions(), registry.alias("canary"), registry.alias("stable"))
    held = lineage_sample_ids(registry, parent)
    again = [e for e in again if e.sample is not None and e.sample.sample_id not in held]
    return again[:max(0, 2 * learner.config.batch_size - len(batch))]


def remember(learner: Learner, outcome: RoundOutcome) -> None:
    """Count the round's trained entries, and keep the newest ``learner_recall`` of them for ``recall``."""
    if outcome.status not in ("published", "gate_failed"):
        return  # refused: nothing was published, the entries stay pending in the stream
    for entry in outcome.selection.train:
        learner.attempts[entry.entry_id] = learner.attempts.get(entry.entry_id, 0) + 1
        learner.trained.pop(entry.entry_id, None)
        learner.trained[entry.entry_id] = entry  # newest last
    while len(learner.trained) > learner.settings.learner_recall:
        oldest = next(iter(learner.trained))
        del learner.trained[oldest]
        learner.attempts.pop(oldest, None)


def run_continuous(learner: Learner, stop: threading.Event, metrics: Metrics, rounds: int | None = None) -> int:
    """Train whenever ``batch_size`` new trainable samples of one scope wait; stop on ``stop`` or after ``rounds`` rounds.

    After every read the learner says what it is doing (``Learner.tell``).
    """
    held = learner.held  # delivered to this consumer, waiting for a full batch
    done = 0
    seen = "0-0"
    try:
        while not stop.is_set() and (rounds is None or done < rounds):
            read = learner.reader.read(256, block_ms=learner.settings.learner_poll_ms)
            held += read
            seen = max([seen, *(e.entry_id for e in read)], key=stream_id)
            kept: list[Entry] = []
            ready: str | None = None  # the first scope with a full batch waiting
            for scope, entries in by_scope(held).items():
                _, selection = learner.classify(entries, scope)
                trainable = {e.entry_id for e in selection.train}
                learner.reader.ack([i for i in selection.entry_ids if i not in trainable])
                kept += [e for e in entries if e.entry_id in trainable]
                if ready is None and len(trainable) >= learner.config.batch_size:
                    ready = scope
            held[:] = kept
            metrics.pending.set(len(held))
            if ready is None:
                learner.tell("waiting", len(held), seen)
                continue
            learner.tell("training", len(held), seen)
            batch = [e for e in held if entry_scope(e) == ready][:learner.settings.learner_round_max]
            again = recall(learner, ready, batch)
            outcome = learner.round(batch + again, scope=ready, one_batch=True)
            recalled = [e for e in outcome.selection.train if e.entry_id in learner.trained]
            metrics.observe(outcome)
            metrics.recalled.inc(len(recalled))
            log().info("round", scope=ready, status=outcome.status, version=outcome.version,
                       samples=len(outcome.selection.train), recalled=len(recalled))
            remember(learner, outcome)
            # published entries are acked; refused ones stay pending until the next start; entries beyond the
            # round's bound wait for the next round
            taken = {e.entry_id for e in batch}
            held[:] = [e for e in held if e.entry_id not in taken]
            learner.tell("waiting", len(held), seen)
            done += 1
    finally:
        learner.tell(None)
    return EXIT_PUBLISHED
