"""An append-only spool file for records that could not reach Redis, replayed in order later.

One JSON line per entry in ``spool.jsonl``; ``spool.offset`` holds the byte offset up to which
entries have been replayed. The offset is saved after every replayed entry and entries are written
idempotently, so a crash mid-replay neither loses nor duplicates anything. Once everything is
replayed both files are truncated. Several proxy processes sharing one home each claim their own
slot directory (an exclusive ``flock``), so their spools never interleave; a restarted process
claims a free slot and replays whatever the previous owner left there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

MAX_SLOTS = 256


class Spool:
    def __init__(self, directory: Path, lock_fd: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.jsonl"
        self.offset_path = directory / "spool.offset"
        self._lock_fd = lock_fd
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @staticmethod
    def _lock(directory: Path) -> int | None:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @classmethod
    def claim(cls, base: Path) -> Spool:
        """The first slot under ``base`` that no other live process holds."""
        base.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            directory = base / f"slot-{slot}"
            directory.mkdir(exist_ok=True)
            fd = cls._lock(directory)
            if fd is not None:
                return cls(directory, fd)
        raise RuntimeError(f"all {MAX_SLOTS} spool slots under {base} are taken")

    @classmethod
    def orphans(cls, base: Path) -> list[Spool]:
        """Other slots no live process holds that still have records (left by fewer processes now)."""
        found = []
        for directory in sorted(base.glob("slot-*")):
            fd = cls._lock(directory)
            if fd is None:
                continue  # held: its own process replays it (or it is ours)
            spool = cls(directory, fd)
            if spool.pending():
                found.append(spool)
            else:
                spool.close()
        return found

    def close(self) -> None:
        os.close(self._fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the slot
            self._lock_fd = None

    def append(self, line: str) -> None:
        """Append one line whole, or raise ``OSError`` leaving the file as it was (a full or unwritable disk)."""
        data = line.encode() + b"\n"
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write to the spool ({written} of {len(data)} bytes)")
        except OSError:
            with contextlib.suppress(OSError):  # no half line left behind to hold up the replay
                os.ftruncate(self._fd, size)
            raise

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


class UnwritableSpool(Spool):
    """Stands in when no spool can be opened (an unwritable or missing disk): every append fails, so the
    recorder counts the records it has to drop while Redis is down; serving goes on."""

    def __init__(self, directory: Path, error: OSError) -> None:  # opens nothing
        self.path = directory / "spool.jsonl"
        self.offset_path = directory / "spool.offset"
        self.error = error
        self._lock_fd = None

    def close(self) -> None:
        pass

    def append(self, line: str) -> None:
        raise OSError(self.error.errno, f"no spool: {self.error}")

    def pending(self) -> bool:
        return False

    def entries(self) -> Iterator[tuple[int, str]]:
        return iter(())

    def commit(self, offset: int) -> None:
        pass

    def reset_if_drained(self) -> None:
        pass
