"""``nextstate learn``: train candidate adapters from labeled samples and publish them to the registry.

``--once`` consumes every sample available now, trains one candidate, hands it to the gate, prints a
one-screen summary and exits with a status (0 published, 3 nothing to train, 4 refused by the
collapse guard, 5 rejected by the gate, 1 error). Without it the learner runs continuously: it trains
whenever ``batch_size`` trainable samples of one learning scope are waiting and exports Prometheus
metrics.

Samples are batched per learning scope (``SampleRecord.scope``): a round trains one scope's samples
only, on top of that scope's lineage — or, when a personal scope has no version yet, on top of the
global stable (``Manifest.started_from``) — and publishes into that scope. Hint demonstrations are
sampled from the round's own samples, so nothing one scope taught reaches another scope's adapter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
import structlog
from prometheus_client import start_http_server
from tqdm import tqdm

from labeler.records import SAMPLES_STREAM
from learner.config import METHODS, TrainConfig
from learner.data import (
    Entry,
    SampleReader,
    Selection,
    build_item,
    by_scope,
    entry_scope,
    lineage_sample_ids,
    select,
)
from learner.demos import sample_demos
from learner.learner_settings import LearnerSettings, build_config
from learner.modeling import load_model, pick_device, resolve_model
from learner.retain import load_prompts, sample_retain
from learner.train import TrainResult, attach_adapter, train
from proxy.embedded_redis import resolve_redis_url
from proxy.logs import configure_logging
from proxy.redis_connect import CLUSTER_UNREACHABLE, connect
from registry.lineage import training_parent
from registry.records import GLOBAL_SCOPE, AuditEvent, LearnerState, Manifest, learner_state_key
from registry.store import Registry
from registry.sweep import sweep


def log() -> Any:
    """A fresh logger each time: ``main`` may reconfigure logging (tests run it many times in one process)."""
    return structlog.get_logger("learner.learn")


EXIT_PUBLISHED, EXIT_ERROR, EXIT_NOTHING, EXIT_REFUSED, EXIT_GATE_FAILED = 0, 1, 3, 4, 5
@dataclass
class RoundOutcome:
    """What one training round did (also the source of the summary and the exit status)."""

    status: str  # published | nothing | refused | gate_failed
    selection: Selection
    parent: str | None
    scope: str = GLOBAL_SCOPE
    version: str | None = None
    result: TrainResult | None = None
    gate: dict[str, Any] | None = None
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"published": EXIT_PUBLISHED, "nothing": EXIT_NOTHING, "refused": EXIT_REFUSED,
                "gate_failed": EXIT_GATE_FAILED}[self.status]


def base_revision(model_dir: Path) -> str:
    """The base model's revision: the built-in model's fingerprint, a hub snapshot id, or a config hash."""
    info = model_dir / "nextstate_tiny.json"
    if info.is_file():
        return f"tiny:{json.loads(info.read_text()).get('fingerprint')}"
    if model_dir.parent.name == "snapshots":
        return model_dir.name
    config = model_dir / "config.json"
    return "config:" + hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else "unknown"


def hand_to_gate(
    settings: LearnerSettings, registry: Registry, version: str, base: Any = None, tokenizer: Any = None
) -> dict[str, Any] | None:
    """The one place a new candidate meets the sacred gate (``learner.gate.run_gate_for_version``).

    The learner's base model is lent to the gate (no second copy in memory). Returns the verdict as a
    dict (``passed``, ``reasons``, ...) or None when no gate is available.
    """
    try:
        from learner import gate
    except ImportError:
        return None
    run = getattr(gate, "run_gate_for_version", None)
    if run is None:
        return None
    try:
        verdict = run(version, settings=settings, registry=registry, base=base, tokenizer=tokenizer)
    except Exception as exc:  # the candidate stays published and ungated; the operator sees why
        log().exception("gate_failed_to_run", version=version)
        return {"passed": False, "reasons": [f"gate error: {type(exc).__name__}: {exc}"]}
    if verdict is None:
        return None
    return verdict.model_dump(mode="json") if hasattr(verdict, "model_dump") else dict(verdict)


class Learner:
    """Owns the base model, the reader and the registry; ``round`` trains and publishes one candidate."""

    def __init__(self, settings: LearnerSettings, client: redis.Redis, config: TrainConfig | None = None) -> None:
        self.settings = settings
        self.device = str(pick_device(settings.device))
        self.config = config or build_config(settings, self.device)
        self.registry = Registry(client, settings.adapters_path(), base_model=settings.base_model)
        self.reader = SampleReader(client, group=settings.learner_group, consumer=settings.learner_consumer,
                                   claim_idle_ms=settings.learner_claim_idle_ms)
        self.model_dir = resolve_model(settings.base_model, settings.home_dir())
        self.base, self.tokenizer = load_model(self.model_dir, self.device, self.config.dtype)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.held: list[Entry] = []  # continuous mode: trainable entries read but not trained yet
        self.trained: dict[str, Entry] = {}  # continuous mode: entries trained into candidates, oldest first (bounded)
        self.attempts: dict[str, int] = {}  # entry id -> candidates it was trained into
        self.retain_prompts = load_prompts(settings.retain_file) if self.config.w_retain > 0 else []
        self.rounds = 0

    def registry_for(self, scope: str) -> Registry:
        return self.registry.scoped(scope)

    def classify(self, entries: list[Entry], scope: str = GLOBAL_SCOPE) -> tuple[str | None, Selection]:
        # train on top of the newest version that will reach users next: a gated version extending the
        # running canary (else stable), else the canary, else stable. Candidates then form a chain whose
        # tip holds every round's training, and the controller canaries that tip (registry.lineage)
        registry = self.registry_for(scope)
        parent = training_parent(registry.versions(), registry.alias("canary"), registry.alias("stable"))
        selection = select(
            entries, method=self.config.method, lineage_ids=lineage_sample_ids(registry, parent),
            stored_revisions=self.reader.stored_revisions(e.sample.turn_id for e in entries if e.sample),
            present=self.reader.present(e.entry_id for e in entries),
        )
        return parent, selection

    def tell(self, state: Literal["waiting", "training"] | None, held: int = 0, seen: str = "0-0") -> None:
        """Say in Redis what this learner is doing (None: it stopped); a failed write is only logged."""
        key = learner_state_key(self.reader.consumer)
        try:
            if state is None:
                self.reader.redis.delete(key)
                return
            said = LearnerState(consumer=self.reader.consumer, state=state, held=held, seen=seen)
            # training may take long on a big model: that state stays until the round ends
            self.reader.redis.set(key, said.model_dump_json(), ex=None if state == "training" else 60)
        except (redis.RedisError, *CLUSTER_UNREACHABLE) as exc:
            log().info("learner_state_not_written", error=repr(exc))

    def round(self, entries: list[Entry], progress: bool = False, scope: str = GLOBAL_SCOPE,
              one_batch: bool = False) -> RoundOutcome:
        """Train on the trainable entries of ``scope``, publish a candidate into it, acknowledge, gate.

        Skipped entries are acked at once; entries of another scope are left alone (not trained, not acked).
        ``one_batch``: all of the round's samples form one batch (``steps_per_batch`` steps, however many it
        holds), so a candidate moves from its parent no further than a round of new samples moves it.
        """
        started = time.perf_counter()
        registry = self.registry_for(scope)
        parent, selection = self.classify([e for e in entries if entry_scope(e) == scope], scope)
        skipped = [i for ids in selection.skipped.values() for i in ids]
        self.reader.ack(skipped)  # they will never take a batch slot
        if not selection.train:
            return RoundOutcome("nothing", selection, parent, scope, wall_seconds=time.perf_counter() - started)
        # a personal lineage starts from the global stable: its adapter, and pi_old where it served the turn
        origin = registry.get(parent) if parent else registry.effective_stable()
        parent_scope = origin.scope if origin is not None else GLOBAL_SCOPE
        items = [build_item(e, self.tokenizer, method=self.config.method,
                            parent_version=origin.version if origin is not None else None, parent_scope=parent_scope,
                            max_prompt_tokens=self.config.max_prompt_tokens,
                            max_response_tokens=self.config.max_response_tokens) for e in selection.train]
        parent_dir = registry.scoped(origin.scope).path_of(origin) if origin is not None else None
        started_from = origin.version if origin is not None and parent is None else None
        model = attach_adapter(self.base, self.config, parent_dir)
        self.rounds += 1
        retain = sample_retain(model, self.tokenizer, self.retain_prompts, self.config, self.config.seed + self.rounds)
        samples = [e.sample for e in selection.train if e.sample is not None]  # select() keeps parsed ones only
        assert len(samples) == len(items)  # sample i and item i are the same context
        # one person's scope may demonstrate a hint on all of its contexts; the shared scope only on the
        # conversation that gave it (one user's "answer in one word" is not everyone's)
        demo_config = self.config if scope != GLOBAL_SCOPE else self.config.replace(demo_scope="conversation")
        demos = sample_demos(model, self.tokenizer, samples, [it.prompt_ids for it in items], demo_config,
                             self.config.seed + self.rounds) if self.config.uses_opd else []
        log().info("training", scope=scope, parent=parent, samples=len(items), retain=len(retain), demos=len(demos),
                   method=self.config.method, device=self.device)
        config = self.config.replace(batch_size=max(self.config.batch_size, len(items))) if one_batch else self.config
        steps = -(-len(items) // config.batch_size) * config.steps_per_batch
        with tqdm(total=steps, desc="training", unit="step", disable=None if progress else True, file=sys.stderr) as bar:
            def on_step(n: int, m: dict[str, float]) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", clip=f"{m['clip_fraction']:.2f}")
                log().debug("train_step", step=n, loss=m["loss"], entropy=m["entropy"])

            result = train(model, items, config, pad_id=self.pad_id, progress=on_step, parent_dir=parent_dir,
                           retain=retain, demos=demos)
        try:
            outcome = self._finish(model, selection, parent, result, registry, started_from)
        finally:
            self.base = model.unload().eval()  # the bare base model again, for the gate and the next round
        if outcome.version is not None and self.settings.learner_gate:
            outcome.gate = hand_to_gate(self.settings, registry, outcome.version, self.base, self.tokenizer)
            if outcome.gate is not None and not outcome.gate.get("passed", False):
                outcome.status = "gate_failed"
        outcome.wall_seconds = time.perf_counter() - started
        return outcome

    def _finish(self, model: Any, selection: Selection, parent: str | None, result: TrainResult,
                registry: Registry, started_from: str | None) -> RoundOutcome:
        sample_ids = [e.sample.sample_id for e in selection.train if e.sample]
        evidence = {"metrics": result.metrics, "parent": parent, "samples": len(sample_ids)}
        if result.refused is not None:
            registry.log(AuditEvent(kind="candidate_refused", actor="learner", reason=result.refused, evidence=evidence))
            log().warning("candidate_refused", scope=registry.scope, reason=result.refused)
            return RoundOutcome("refused", selection, parent, registry.scope, result=result)
        entry_ids = sorted((e.entry_id for e in selection.train), key=lambda i: tuple(map(int, i.split("-"))))
        manifest_metrics = {**result.metrics, "pi_old": result.pi_old_sources, "token_methods": result.token_methods}
        version = registry.allocate_version()
        staging = registry.staging_dir(version)
        try:
            model.save_pretrained(str(staging))
            manifest = Manifest(
                version=version, parent=parent, scope=registry.scope, started_from=started_from,
                base_model=self.settings.base_model,
                base_revision=base_revision(self.model_dir), method=self.config.method,
                config=self.config.to_dict(), sample_ids=sample_ids, metrics=manifest_metrics,
                stream_offsets={SAMPLES_STREAM: entry_ids[-1], f"{SAMPLES_STREAM}:first": entry_ids[0]},
                entry_ids=entry_ids, device=self.device,
            )
            with registry.atomic() as transaction:  # the version and the ack of its samples land together
                registry.publish(staging, manifest)
                self.reader.ack(entry_ids, via=transaction)
        except BaseException:
            registry.discard_staging(staging)
            raise
        log().info("candidate_published", scope=registry.scope, version=version, parent=parent, samples=len(sample_ids))
        return RoundOutcome("published", selection, parent, registry.scope, version=version, result=result)


def summary(outcome: RoundOutcome, config: TrainConfig) -> str:
    """The one-screen report of a ``--once`` run."""
    counts = outcome.selection.counts()
    skipped = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "train") or "none"
    lines = ["nextstate learn --once", f"  scope       {outcome.scope}", f"  samples     {sum(counts.values())} read, {counts['train']} trained (skipped: {skipped})",
             f"  parent      {outcome.parent or 'base model'}"]
    r = outcome.result
    if r is not None:
        m = r.metrics
        lines += [
            f"  method      {config.method} (w_rl {config.w_rl}, w_opd {config.w_opd}): {m['rl_samples']:.0f} rewarded, {m['opd_samples']:.0f} hinted",
            f"  tokens      {m['response_tokens']:.0f} response tokens, {m['tokens']:.0f} processed, {m['tokens_per_s']:.0f} tokens/s",
            f"  loss        {m['loss']:+.4f} (final {m['final_loss']:+.4f}), reward mean {m['reward_mean']:+.3f}",
            f"  KL          to base {m['kl_base']:.4f}, to parent {m['kl_parent']:.4f} nats/token; entropy {m['entropy']:.3f}; clip {m['clip_fraction']:.3f}",
            f"  likelihood  prefer {m.get('logp_delta_prefer', 0.0):+.4f}, avoid {m.get('logp_delta_avoid', 0.0):+.4f} nats/token",
            f"  retain      {m.get('retain_samples', 0.0):.0f} reference answers, NLL {m.get('retain_nll_first', 0.0):.3f} -> "
            f"{m.get('retain_nll_final', 0.0):.3f} nats/token",
            f"  demos       {m.get('demo_samples', 0.0):.0f} hinted-teacher answers, NLL {m.get('demo_nll_first', 0.0):.3f} -> "
            f"{m.get('demo_nll_final', 0.0):.3f} nats/token",
            f"  pi_old      {r.pi_old_sources}; token ids {r.token_methods}",
        ]
    if outcome.version:
        lines.append(f"  candidate   {outcome.version}")
    if outcome.gate is not None:
        verdict = "passed" if outcome.gate.get("passed") else "failed: " + "; ".join(outcome.gate.get("reasons", []))
        lines.append(f"  gate        {verdict}")
    reason = f" ({r.refused})" if r is not None and r.refused else ""
    lines += [f"  wall time   {outcome.wall_seconds:.1f} s", f"  result      {outcome.status}{reason} -> exit {outcome.exit_code}"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nextstate learn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--once", action="store_true", help="consume what is available, train one candidate, exit")
    p.add_argument("--method", choices=METHODS, help="objective (default combined)")
    p.add_argument("--w-rl", type=float, dest="w_rl")
    p.add_argument("--w-opd", type=float, dest="w_opd")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--steps-per-batch", type=int, dest="steps_per_batch")
    p.add_argument("--kl-coef", type=float, dest="kl_coef")
    p.add_argument("--topk", type=int, help="top-K distillation variant (0 = off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--w-retain", type=float, dest="w_retain", help="weight of the retain set (0 = off)")
    p.add_argument("--hint-demos", type=int, dest="hint_demos", help="hinted-teacher answers per context (0 = off)")
    p.add_argument("--w-demo", type=float, dest="w_demo", help="weight of the hint demonstrations")
    p.add_argument("--retain-file", type=Path, dest="retain_file", help="retain set JSONL (default: bundled)")
    p.add_argument("--preset", choices=("tiny", "small", "gpu", "auto"))
    p.add_argument("--device")
    p.add_argument("--model", dest="base_model", help="base model (default builtin:tiny-chat)")
    p.add_argument("--no-gate", action="store_false", dest="learner_gate", default=None)
    p.add_argument("--metrics-port", type=int, dest="learner_metrics_port")
    p.add_argument("--rounds", type=int, help="continuous mode: stop after this many rounds")
    p.add_argument("--json", action="store_true", help="--once: print the outcome as one JSON line too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("once", "rounds", "json")}
    settings = LearnerSettings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    url, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
    client = connect(url, socket_timeout=30, socket_connect_timeout=10)
    try:
        learner = Learner(settings, client)
        sweep(learner.registry, settings.staging_grace_s)  # what a killed publish left behind
        if args.once:
            entries = learner.reader.read_all(settings.learner_max_samples)
            outcomes = [learner.round(group, progress=True, scope=scope) for scope, group in by_scope(entries).items()]
            if not outcomes:
                outcomes = [learner.round([], progress=True)]
            for outcome in outcomes:
                print(summary(outcome, learner.config), flush=True)
                if args.json:
                    print(json.dumps({"scope": outcome.scope, "status": outcome.status, "version": outcome.version,
                                      "parent": outcome.parent, "counts": outcome.selection.counts(),
                                      "gate": outcome.gate,
                                      "metrics": outcome.result.metrics if outcome.result else None}), flush=True)
            return min(outcomes, key=lambda o: (o.status == "nothing", o.exit_code)).exit_code
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        # the continuous loop drives this module's Learner
        from learner.continuous import Metrics, run_continuous

        metrics = Metrics()
        if settings.learner_metrics_port:
            start_http_server(settings.learner_metrics_port, registry=metrics.registry)
        log().info("learner_started", device=learner.device, config=learner.config.to_dict())
        return run_continuous(learner, stop, metrics, args.rounds)
    except Exception:
        log().exception("learner_failed")
        return EXIT_ERROR
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()
