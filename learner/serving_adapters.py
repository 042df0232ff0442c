"""The LoRA adapters the policy server's engine holds in its model at once, and which one its layers apply.

At most ``max_loras`` adapters are materialised; to make room for another, the least recently used one
that no running request needs is given back (and reloaded from disk when asked for again), as vLLM does.
When the last one goes, the plain model is given back too. Only the engine's thread touches this.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

log = structlog.get_logger("learner.serving_engine")


class LoraSlots:
    def __init__(self, base: Any, max_loras: int) -> None:
        self.base = base
        self.max_loras = max_loras
        self._peft: PeftModel | None = None
        self._layers: list[BaseTunerLayer] = []
        self._applied: str | None = None  # what the LoRA layers currently apply ("" = disabled, None = unknown)
        self._lru: OrderedDict[str, None] = OrderedDict()

    @property
    def names(self) -> list[str]:
        """The materialised adapters, least recently used first."""
        return list(self._lru)

    def __contains__(self, name: str) -> bool:
        return name in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def model_for(self, adapter: str | None) -> Any:
        """The model to run with ``adapter`` applied (None: none), switching the LoRA layers only when needed."""
        if self._peft is None:
            return self.base
        want = adapter or ""
        if self._applied != want:
            for layer in self._layers:
                if want:
                    layer.enable_adapters(True)
                    layer.set_adapter(want)
                else:
                    layer.enable_adapters(False)
            self._applied = want
        if adapter is not None:
            self._lru.move_to_end(adapter)
        return self._peft

    def make_room(self, in_use: set[str]) -> bool:
        """Free a slot when all are taken, giving back the least recently used adapter not in ``in_use``;
        False when every slot is taken by one in use."""
        if len(self._lru) < self.max_loras:
            return True
        idle = [name for name in self._lru if name not in in_use]
        if not idle:
            return False
        self.remove(idle[0])
        return True

    def add(self, name: str, path: Path) -> None:
        started = time.monotonic()
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base, str(path), adapter_name=name, is_trainable=False)
        else:
            self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self._peft.eval()
        self._layers = [m for m in self._peft.modules() if isinstance(m, BaseTunerLayer)]
        self._applied = None  # unknown after peft changed it: switch on the next step
        self._lru[name] = None
        log.info("adapter_materialised", adapter=name, ms=round(1000 * (time.monotonic() - started), 1))

    def remove(self, name: str) -> None:
        assert self._peft is not None
        if len(self._lru) == 1:
            self.base = self._peft.unload()  # the last adapter: give back the plain model
            self._peft, self._layers = None, []
        else:
            self._peft.delete_adapter(name)
            self._layers = [m for m in self._peft.modules() if isinstance(m, BaseTunerLayer)]
        self._applied = None
        del self._lru[name]
