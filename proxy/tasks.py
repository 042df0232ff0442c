"""Background-task helpers: loops that stop when cancelled, even when a library swallowed the cancel.

Some client libraries turn a ``CancelledError`` raised inside a network call into their own
connection error; a loop that survives errors must then check that it is being cancelled.
"""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """True when the running task has been asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(tasks: list[asyncio.Task[None]], timeout: float = 3.0) -> None:
    """Cancel the tasks and wait for them, but never longer than ``timeout``."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
