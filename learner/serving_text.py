"""Incremental detokenization for streaming: release text only when it is final.

Text is held back while it ends in an incomplete UTF-8 character (byte-level tokens) or in a prefix
of a stop string; a stop string ends the text before it, as vLLM does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest stop string in ``text`` at or after ``start`` (None when absent)."""
    hits = [index for stop in stops if stop and (index := text.find(stop, start)) >= 0]
    return min(hits) if hits else None


class IncrementalText:
    """Accumulate token ids; ``push`` returns the text that became final with this token."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = [stop for stop in stops if stop]
        self.token_ids: list[int] = []
        self.text = ""  # the full decoded text so far (final once ``stopped``)
        self.sent = 0  # characters of ``text`` already released
        self.stopped = False  # a stop string was found: generation must end

    def push(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        text = self._decode(self.token_ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            self.text = text
            return ""
        search_from = max(0, self.sent - max((len(stop) for stop in self._stops), default=0))
        index = find_stop(text, self._stops, search_from)
        if index is not None:
            self.text, self.stopped = text[:index], True
            return self._release(len(self.text))
        self.text = text
        return self._release(len(text) - stop_prefix_len(text, self._stops))

    def flush(self) -> str:
        """Release everything still held back (generation ended without a stop string)."""
        if self.text.endswith("\ufffd") and not self.stopped:
            self.text = self._decode(self.token_ids)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta
