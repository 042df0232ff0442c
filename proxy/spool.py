"""An append-only spool file for records that could not reach Redis, replayed in order later.

One JSON line per entry in ``spool.jsonl``; ``spool.offset`` holds the byte offset up to which
entries have been replayed. The offset is saved after every replayed entry and entries are written
idempotently, so a crash mid-replay neither loses nor duplicates anything. Once everything is
replayed both files are truncated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.jsonl"
        self.offset_path = directory / "spool.offset"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        os.close(self._fd)

    def append(self, line: str) -> None:
        data = line.encode() + b"\n"
        written = os.write(self._fd, data)
        if written != len(data):  # pragma: no cover - a full disk
            raise OSError("short write to spool")

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def pending(self) -> bool:
        return os.fstat(self._fd).st_size > self._offset()

    def entries(self) -> Iterator[tuple[int, str]]:
        """Unreplayed entries as (offset after the entry, line), oldest first."""
        offset = self._offset()
        with self.path.open("rb") as handle:
            handle.seek(offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return  # a line still being written
                offset += len(raw)
                yield offset, raw.decode()

    def commit(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def reset_if_drained(self) -> None:
        if os.fstat(self._fd).st_size == self._offset():
            os.ftruncate(self._fd, 0)
            self.commit(0)
