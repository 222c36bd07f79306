"""The start and stop of a worker: the drain lock (private, never followed through a symlink,
never a reason not to start) and BentoML's timeout timers cancelled once a request is over."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from keyed_serving.serving import lifecycle

SERVER_PID = 4_000_001  # no such process: the lock files are this test's own


@pytest.fixture
def in_a_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A worker's view: in a server, its parent the server, a runtime dir of its own."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setattr(lifecycle, "_in_server", lambda: True)
    monkeypatch.setattr(os, "getppid", lambda: SERVER_PID)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    yield runtime


def held_exclusively(path: Path) -> IO[bytes]:
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def start_entry(**options: Any) -> tuple[bool, list[Any]]:
    """hold_entry_lock in a thread: (whether it returned within 20 s, what it returned)."""
    got: list[Any] = []
    worker = threading.Thread(
        target=lambda: got.append(lifecycle.hold_entry_lock(**options)), daemon=True
    )
    worker.start()
    worker.join(timeout=20)
    return not worker.is_alive(), got


def test_a_lock_held_at_the_old_shared_path_does_not_block_the_entry(in_a_server: Path) -> None:
    old = Path(tempfile.gettempdir()) / f"keyed-serving-{SERVER_PID}.entry.lock"
    hostile = held_exclusively(old)
    try:
        returned, got = start_entry()
    finally:
        hostile.close()
        old.unlink(missing_ok=True)
    assert returned
    assert got[0] is not None  # the entry holds its own lock, elsewhere
    private = lifecycle.lock_path(SERVER_PID, in_a_server)
    assert os.fstat(got[0].fileno()).st_ino == private.stat().st_ino
    got[0].close()


def test_a_lock_held_at_the_private_path_delays_start_only_boundedly(
    in_a_server: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = lifecycle.lock_path(SERVER_PID, in_a_server)
    path.parent.mkdir(mode=0o700)
    holder = held_exclusively(path)
    try:
        with caplog.at_level(logging.WARNING, "keyed_serving.serving.lifecycle"):
            returned, got = start_entry(wait_s=0.2)
    finally:
        holder.close()
    assert returned and got == [None]
    assert "without the drain guarantee" in caplog.text


def test_a_symlink_in_place_of_the_lock_is_not_followed(in_a_server: Path, tmp_path: Path) -> None:
    path = lifecycle.lock_path(SERVER_PID, in_a_server)
    path.parent.mkdir(mode=0o700)
    target = tmp_path / "somebody-elses-file"
    path.symlink_to(target)
    returned, got = start_entry()
    assert returned and got == [None]
    assert not target.exists()


def test_a_runtime_dir_others_may_write_is_not_used(in_a_server: Path) -> None:
    shared = lifecycle.lock_path(SERVER_PID, in_a_server).parent
    shared.mkdir()
    shared.chmod(0o777)
    returned, got = start_entry()
    assert returned and got == [None]
    assert list(shared.iterdir()) == []


def test_the_entry_lock_keeps_the_runner_waiting_until_the_entry_is_gone(
    in_a_server: Path,
) -> None:
    entry = lifecycle.hold_entry_lock()
    assert entry is not None
    path = lifecycle.lock_path(SERVER_PID, in_a_server)
    with path.open("ab") as runner_side:
        assert not lifecycle._entries_gone(runner_side)
        entry.close()  # the entry worker exits
        assert lifecycle._entries_gone(runner_side)


def test_the_private_directory_is_made_for_this_user_only(in_a_server: Path) -> None:
    entry = lifecycle.hold_entry_lock()
    assert entry is not None
    entry.close()
    made = lifecycle.lock_path(SERVER_PID, in_a_server).parent.stat()
    assert made.st_mode & 0o777 == 0o700 and made.st_uid == os.getuid()


# ---- BentoML's timeout timers (settle_the_heap) ------------------------------------------


def bentomls_own_timeout_call() -> Any:
    """BentoML's TimeoutMiddleware.__call__ as its module defines it, from a fresh copy of the
    module (an in-process server of an earlier test may have replaced the class's)."""
    import importlib.util

    spec = importlib.util.find_spec("bentoml._internal.server.http.traffic")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TimeoutMiddleware.__call__


@pytest.fixture
def timers_cancelled(monkeypatch: pytest.MonkeyPatch) -> type:
    """BentoML's TimeoutMiddleware as a started worker has it; put back after the test."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    monkeypatch.setattr(TimeoutMiddleware, "__call__", bentomls_own_timeout_call())
    lifecycle.cancel_timeout_timers()
    assert TimeoutMiddleware.__call__ is lifecycle._timeout_then_cancel
    return TimeoutMiddleware


def through_the_timeout(middleware_class: type, app: Any, timeout: float) -> tuple[list, int]:
    """One HTTP request through the middleware: (the messages sent, the timers still pending
    on the loop once the request is over)."""
    sent: list[Any] = []

    async def request() -> int:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        await middleware_class(app, timeout=timeout)(scope, receive, send)
        # asyncio's own list of scheduled timers: a cancelled one no longer counts.
        return sum(not h.cancelled() for h in asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]

    pending = asyncio.run(request())
    return sent, pending


async def answer_ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_request_leaves_no_timeout_timer_behind(timers_cancelled: type) -> None:
    # BentoML's own left one per request for the whole timeout: 80,000 at W1 (35 s).
    sent, pending = through_the_timeout(timers_cancelled, answer_ok, timeout=35.0)
    assert [m.get("status") for m in sent][:1] == [200] and sent[-1]["body"] == b"ok"
    assert pending == 0


def test_an_app_that_ends_without_answering_is_not_waited_for(timers_cancelled: type) -> None:
    """The gate ends a request whose client went away (it reads http.disconnect) without an
    answer. BentoML's middleware then waited for one until its timeout: each such request,
    and the worker's shutdown after a load generator stopped, was held 35 s (seen)."""

    async def client_gone(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def request() -> list[Any]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        middleware = timers_cancelled(client_gone, timeout=35.0)
        await asyncio.wait_for(middleware(scope, receive, send), 5)
        return sent

    assert asyncio.run(request()) == []


def test_a_request_past_the_timeout_is_still_answered_504(timers_cancelled: type) -> None:
    async def never_answers(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    sent, pending = through_the_timeout(timers_cancelled, never_answers, timeout=0.01)
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {
        "error": "Not able to process the request in 0.01 seconds"
    }
    assert pending == 0


def test_the_timeout_middleware_copied_is_bentomls_own() -> None:
    """lifecycle._timeout_then_cancel is BentoML's TimeoutMiddleware.__call__ with its timer
    cancelled. This fails when the pinned BentoML changes that code: read the new one, copy
    it again, and set TIMEOUT_MIDDLEWARE_COPIED (a server would otherwise leave BentoML's
    in place, with a warning)."""
    assert lifecycle.timeout_middleware_digest() == lifecycle.TIMEOUT_MIDDLEWARE_COPIED


def test_another_timeout_middleware_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    monkeypatch.setattr(TimeoutMiddleware, "__call__", bentomls_own_timeout_call())
    monkeypatch.setattr(lifecycle, "TIMEOUT_MIDDLEWARE_COPIED", "0" * 64)
    # Heard here whatever logging configuration an earlier test (a server's) left behind.
    warned: list[str] = []
    monkeypatch.setattr(lifecycle.logger, "warning", lambda msg, *a: warned.append(msg % a))
    own = TimeoutMiddleware.__call__
    lifecycle.cancel_timeout_timers()
    assert TimeoutMiddleware.__call__ is own
    assert len(warned) == 1 and "left as they are" in warned[0]


def test_a_settled_entry_collects_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's own (an in-process server may have set others)
    try:
        lifecycle.settle_the_heap()
        assert gc.get_threshold() == (700, 10, 10)  # a runner's
        lifecycle.settle_the_heap(many_requests=True)
        assert gc.get_threshold() == lifecycle.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
