"""What a worker does as it starts and stops: the heap settled after start-up, BentoML's
timeout timers kept from holding memory, and the shutdown order of the two services.

Start-up (``settle_the_heap``, both workers). BentoML's ``TimeoutMiddleware`` schedules a
timer for every request (``loop.call_later(traffic.timeout, ...)``) and never cancels it:
the timer, its future and the copy of the request's context it holds stay alive for the
whole timeout after the answer went out. At 2,500 requests/s and the entry's 35 s that
was some 80,000 pending timers, 20-25 MB of live Python objects the entry could not give
back (measured, bench/memory_profile.md). Its ``__call__`` is replaced by the same code that
cancels the timer once the request is over, and that stops waiting for an answer once the
app has ended without one (a client gone while its request waited for a turn).

Shutdown: the runner outlives the entry.

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

The lock lives in a directory only this user can enter ($XDG_RUNTIME_DIR, else the
BentoML home), never in the shared temp dir: there another local user could create the
predictable name first and hold it, and the entry would never start. The entry still
waits for its lock only a bounded time: a start without the drain guarantee (logged)
is better than no start.
"""

from __future__ import annotations

import ast
import asyncio
import fcntl
import gc
import hashlib
import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

logger = logging.getLogger("keyed_serving.serving.lifecycle")
# The runner holds the lock exclusively only for the moment it checks; anything longer
# is someone else's doing.
LOCK_WAIT_S = 5.0


# The collector's thresholds in a worker (Python's are 700, 10, 10). Every request
# allocates hundreds of objects, most of them freed by reference counting; under Python's
# thresholds the youngest generation was collected every few requests, and the objects
# of the requests in flight (or waiting for a turn) were promoted and walked again and
# again: py-spy saw 19% of the entry's samples in the collector at 64 connections and 34%
# at 1,024 (before BentoML's timers were cancelled, which removed most of the rest).
# Measured A/B in turn (3 rounds, wrk, one instance per request): 1.06x the requests/s at
# 64 connections and 1.10x at 1,024 with these, the entry's peak RSS the same (129 MB).
# The entry's only: the runner (a call per micro-batch, its work in NumPy) gained nothing
# and held 14-15 MB more (peak RSS 239 vs 224 MB, twice each).
GC_THRESHOLDS = (50_000, 50, 1000)


def settle_the_heap(*, many_requests: bool = False) -> None:
    """At a worker's start: BentoML's timeout timers cancelled once a request is over (see
    above), and everything alive after start-up (BentoML, pydantic, the model: hundreds of
    thousands of objects) moved out of the garbage collector's sight: its full collections
    otherwise walk them all, pausing the worker in the middle of requests. Measured at W1,
    A/B in turn: p99 178-184 ms without the freeze, 115-133 ms with. ``many_requests``
    (the entry): then the collector runs less often (``GC_THRESHOLDS``)."""
    cancel_timeout_timers()
    gc.collect()
    gc.freeze()
    if many_requests:
        gc.set_threshold(*GC_THRESHOLDS)


# The SHA-256 of the source of BentoML's TimeoutMiddleware.__call__ that
# _timeout_then_cancel copies (bentoml 1.4.39 to 1.4.40): another BentoML's is left alone.
TIMEOUT_MIDDLEWARE_COPIED = "12e0d26839288a4659bf2b0974eb464e041393a8578d90b2d3c335699cc5b0f7"


def cancel_timeout_timers() -> None:
    """Makes BentoML's ``TimeoutMiddleware`` cancel its timer when the request is over: the
    same 504 past the timeout, no timer left behind (idempotent). Only where its code is
    the one copied here; else it is left as it is, and a warning says so."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if TimeoutMiddleware.__call__ is _timeout_then_cancel:  # type: ignore[comparison-overlap]
        return
    if timeout_middleware_digest() != TIMEOUT_MIDDLEWARE_COPIED:
        logger.warning(
            "BentoML's TimeoutMiddleware is not the one keyed_serving copied: its timers are "
            "left as they are (each request's lives on for the whole traffic timeout)"
        )
        return
    TimeoutMiddleware.__call__ = _timeout_then_cancel  # type: ignore[method-assign]


def timeout_middleware_digest() -> str:
    """The SHA-256 of the source of BentoML's ``TimeoutMiddleware.__call__``, as its module
    file has it (whether or not it was replaced since)."""
    from bentoml._internal.server.http import traffic

    source = Path(traffic.__file__).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "TimeoutMiddleware":
            for method in node.body:
                if isinstance(method, ast.AsyncFunctionDef) and method.name == "__call__":
                    code = ast.get_source_segment(source, method) or ""
                    return hashlib.sha256(code.encode()).hexdigest()
    return ""


async def _timeout_then_cancel(self: Any, scope: Any, receive: Any, send: Any) -> None:
    # BentoML 1.4's TimeoutMiddleware.__call__ (bentoml/_internal/server/http/traffic.py),
    # with the timer kept and cancelled in `finally`, and not waiting past the app's end.
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)  # type: ignore[no-any-return]
    from starlette.responses import JSONResponse

    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    answering = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)

    # An app that ends without answering (its client went away while the request waited
    # or was read) is not waited for until the timeout: BentoML's held each such request,
    # and a worker's shutdown, for the whole 35 s.
    def ended(_: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)

    answering.add_done_callback(ended)
    try:
        await waiter
    except TimeoutError:
        if answering.cancel():
            late = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(late, status_code=504)(scope, receive, send)
    else:
        await answering
    finally:
        timer.cancel()
    return None


def _in_server() -> bool:
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def runtime_base() -> Path:
    """Where this user's private runtime directory goes."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"])
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


def lock_path(server_pid: int, base: Path) -> Path:
    """The drain lock of the server whose process is ``server_pid``."""
    return base / "keyed-serving-run" / f"{server_pid}.entry.lock"


def _private_lock_path() -> Path | None:
    """The lock path of this server, in a directory made (0700) or checked to be ours and
    private; None (with a warning) when it is not."""
    path = lock_path(os.getppid(), runtime_base())
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(directory)
    except OSError as exc:
        logger.warning("no drain lock: cannot make %s: %s", directory, exc)
        return None
    if (
        not stat.S_ISDIR(found.st_mode)
        or found.st_uid != os.getuid()
        or found.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    ):
        logger.warning("no drain lock: %s is not a private directory of this user", directory)
        return None
    return path


def _open_lock(path: Path) -> IO[bytes] | None:
    try:  # never through a symlink planted in place of the lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        logger.warning("no drain lock: cannot open %s: %s", path, exc)
        return None
    return os.fdopen(fd, "r+b")


def hold_entry_lock(wait_s: float = LOCK_WAIT_S) -> IO[bytes] | None:
    """Entry worker: hold the shared lock until the process ends (keep the file open).

    None outside a server, or when the lock cannot be had within ``wait_s``: the worker
    then starts anyway, without the drain guarantee, and says so."""
    if not _in_server():
        return None
    path = _private_lock_path()
    handle = _open_lock(path) if path is not None else None
    if handle is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # flock has no timeout of its own
    handle.close()
    logger.warning(
        "starting without the drain guarantee: %s stayed locked for %.1f s", path, wait_s
    )
    return None


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
            path = _private_lock_path()
            handle = _open_lock(path) if path is not None else None
            if handle is not None and path is not None:
                with handle:
                    while time.monotonic() - received < max_s and not _entries_gone(handle):
                        await asyncio.sleep(0.05)
                path.unlink(missing_ok=True)
            logger.warning("runner stopping, %.1f s after SIGTERM", time.monotonic() - received)
            hand_on(sig, frame)

        loop.call_soon_threadsafe(lambda: loop.create_task(when_entries_are_gone()))

    signal.signal(signal.SIGTERM, deferred)
    return True
