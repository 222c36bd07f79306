"""Admission: how many requests an entry worker works on at once, the bounded queue of
those waiting for a turn, and each request's deadline. One ``InFlight`` per worker, shared
by the HTTP gate (:mod:`.http`) and the gRPC endpoint (:mod:`.grpc_v2`).

A request past ``limit`` waits, first come first served, rather than being refused: a
client that retries a refusal at once (load generators, proxies, many SDKs) otherwise
spends the server's CPU on refusals, and goodput collapses (issue 18: a sixth of the
64-connection figure at 1,024 connections). It is refused, with 429 + Retry-After, only
where waiting cannot help: the queue is full, or the expected wait would pass its
deadline. One that waits until it could no longer be answered in time is answered 503
without being predicted. Nothing waits past its deadline.

The deadline is the request's whole budget, from the moment it reached the gate:
``request_deadline_s``, or less where the caller said so (a gRPC deadline). What is left
of it once the request has its turn bounds the rest of its work (see ``time_left``).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# The current request's deadline (``time.monotonic()`` seconds), set at admission.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# Weight of the newest gap in the running mean of the gaps between turns.
_GAP_WEIGHT = 0.05


def time_left(default_s: float) -> float:
    """Seconds left of the current request's deadline (``default_s`` outside a request
    that passed admission, e.g. called in-process)."""
    ends = deadline.get()
    return default_s if ends is None else ends - time.monotonic()


@dataclass(frozen=True)
class NoTurn:
    """Why a request gets no turn: 429 (the queue is full, or the wait would pass the
    deadline: retry later) or 503 (it waited, and its deadline has come)."""

    status: int
    reason: str


@dataclass
class InFlight:
    """Requests and request-body bytes in flight on this worker, whichever protocol brought
    them, and the requests waiting for a turn.

    ``limit`` requests are worked on at once; up to ``max_queue`` more wait. ``observe`` is
    told what happens to those past the limit: "queue_full" and "past_deadline" (refused at
    once: the queue is full, or the expected wait would pass the deadline), "queued" (it
    waits), and then one of "waited" (it has its turn), "expired" (it waited until it could
    not be answered in time) and "gave_up" (its caller went away).
    """

    limit: int
    max_queue: int = 0
    observe: Callable[[str], None] = lambda outcome: None
    requests: int = 0
    bytes: int = 0
    queued: int = 0
    # Running mean of the seconds between two turns given back while requests wait: the
    # worker's pace when it is saturated. A request at place p in the queue expects to wait
    # p of them, and then to hold its turn about ``limit`` of them (Little's law).
    turn_gap_s: float = 0.0
    _last_turn: float | None = field(default=None, repr=False)
    # Those waiting, first come first: the last moment a turn is of use to each, and where
    # it learns the outcome (True: a turn; False: too late).
    _waiting: deque[tuple[float, asyncio.Future[bool]]] = field(default_factory=deque, repr=False)
    # One timer for the whole queue (a timer per waiter cost 15% of the worker at 1,024
    # connections): due when the first of them is too late.
    _timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = field(
        default=None, repr=False
    )

    async def enter(self, ends: float) -> NoTurn | None:
        """Takes a turn for a request whose deadline is ``ends`` (``time.monotonic()``),
        waiting for one if need be; or says why there is none. After ``None``, the caller
        must ``leave`` once done."""
        if self.requests < self.limit:  # then no one waits: a turn given back goes to them
            self.requests += 1
            return None
        if self.queued >= self.max_queue:
            self.observe("queue_full")
            return NoTurn(
                429, f"{self.requests} requests in flight and {self.queued} waiting (the most)"
            )
        # Waiting helps only if the request can still be answered once it has its turn.
        until = ends - self.limit * self.turn_gap_s
        expected = (self.queued + 1) * self.turn_gap_s
        if time.monotonic() + expected > until:
            self.observe("past_deadline")
            return NoTurn(
                429,
                f"{self.requests} requests in flight and {self.queued} waiting: the wait "
                f"(about {expected:.1f} s) would pass the request's deadline",
            )
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((until, turn))
        self.queued += 1
        self.observe("queued")
        self._watch()
        try:
            has_turn = await turn
        except BaseException:  # the caller went away
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave()  # the turn it was just handed passes on
            turn.cancel()  # else it is passed over
            self.queued -= 1
            self.observe("gave_up")
            raise
        self.queued -= 1
        if not has_turn:
            self.observe("expired")
            return NoTurn(503, "waited for a turn until it could not be answered in time")
        self.observe("waited")
        return None

    def leave(self) -> None:
        """Gives a turn back, to the request waiting longest that can still use it."""
        now = time.monotonic()
        if self.queued:
            if self._last_turn is not None:
                self.turn_gap_s += _GAP_WEIGHT * (now - self._last_turn - self.turn_gap_s)
            self._last_turn = now
        else:  # not saturated: the next gap would measure idleness, not pace
            self._last_turn = None
        while self._waiting:
            until, turn = self._waiting.popleft()
            if turn.done():  # gave up
                continue
            if until < now:
                turn.set_result(False)
                continue
            turn.set_result(True)  # the turn passes on: ``requests`` stays
            return
        self.requests -= 1

    def _watch(self) -> None:
        """Has the timer due when the first one waiting is too late, unless it is set."""
        loop = asyncio.get_running_loop()
        if self._waiting and (self._timer is None or self._timer[0] is not loop):
            delay = self._waiting[0][0] - time.monotonic()
            self._timer = loop, loop.call_later(max(0.0, delay), self._too_late)

    def _too_late(self) -> None:
        """Answers those at the head of the queue whose time has passed (one with a
        deadline of its own shorter than those before it is answered when it reaches the
        head, or gives up with its caller)."""
        self._timer = None
        now = time.monotonic()
        while self._waiting:
            until, turn = self._waiting[0]
            if not turn.done():
                if until > now:
                    break
                turn.set_result(False)
            self._waiting.popleft()
        self._watch()

    def reserve(self, size: int, budget: int) -> bool:
        """Holds ``size`` more bytes of bodies, if they fit in ``budget`` (else see
        ``MEMORY_FULL``)."""
        if self.bytes + size > budget:
            return False
        self.bytes += size
        return True

    def release(self, size: int) -> None:
        self.bytes -= size


# Why a body that would not fit in the budget (``InFlight.reserve``) is refused.
MEMORY_FULL = "the request bodies in flight fill memory"
