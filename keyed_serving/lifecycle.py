"""Shutdown order for the two services: the runner outlives the entry.

``bentoml serve`` (circus) sends SIGTERM to the entry and the runner workers at the same
moment. The entry then finishes its in-flight requests, but those need the runner, which
had already stopped: measured, a 60,000-row request in flight at SIGTERM waited out its
deadline and ended in 503, and others lost their connection.

So each entry worker holds a shared lock on a file named after the server (the parent
process both workers share) for as long as it lives; the runner, on SIGTERM, keeps
serving until it can take that lock exclusively (every entry worker has exited, the OS
releases a dead process's locks) or a bound passes, and only then stops as usual.
Nothing of this runs outside a real server (no worker index): tests in-process and
``to_asgi`` apps leave signals and files alone.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

logger = logging.getLogger("keyed_serving.lifecycle")


def _in_server() -> bool:
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def _lock_path() -> Path:
    return Path(tempfile.gettempdir()) / f"keyed-serving-{os.getppid()}.entry.lock"


def hold_entry_lock() -> IO[bytes] | None:
    """Entry worker: hold the shared lock until the process ends (keep the file open)."""
    if not _in_server():
        return None
    handle = _lock_path().open("ab")
    fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


def _entries_gone(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def outlive_the_entry(max_s: float) -> bool:
    """Runner worker: defer SIGTERM until every entry worker has exited, at most ``max_s``.
    False where it cannot be installed (not in a server, or not the main thread)."""
    if not _in_server() or threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return False
    loop = asyncio.get_running_loop()
    hand_on: Any = previous

    def deferred(sig: int, frame: FrameType | None) -> None:
        received = time.monotonic()
        signal.signal(signal.SIGTERM, hand_on)  # a second SIGTERM stops at once

        async def when_entries_are_gone() -> None:
            path = _lock_path()
            with path.open("ab") as handle:
                while time.monotonic() - received < max_s and not _entries_gone(handle):
                    await asyncio.sleep(0.05)
            path.unlink(missing_ok=True)
            logger.warning("runner stopping, %.1f s after SIGTERM", time.monotonic() - received)
            hand_on(sig, frame)

        loop.call_soon_threadsafe(lambda: loop.create_task(when_entries_are_gone()))

    signal.signal(signal.SIGTERM, deferred)
    return True
