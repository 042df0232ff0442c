"""Simulated reward streams: labeled samples for the turns a version served, written as the labeler does."""

from __future__ import annotations

import random
import uuid

from labeler.records import SAMPLES_STREAM, SampleRecord
from registry.actions import Control


def add_samples(control: Control, version: str | None, n: int, prefer_rate: float, rng: random.Random) -> None:
    pipe = control.registry.redis.pipeline()
    for _ in range(n):
        turn = uuid.uuid4().hex
        cls = "prefer" if rng.random() < prefer_rate else "avoid"
        sample = SampleRecord(record_id=f"{turn}:r0", sample_id=turn, turn_id=turn, session_id="s", cls=cls,
                              reward=1 if cls == "prefer" else -1, serving_version=version,
                              messages=[{"role": "user", "content": "hi"}], response={"role": "assistant", "content": "x"})
        pipe.xadd(SAMPLES_STREAM, {"record": sample.model_dump_json()})
    pipe.execute()
