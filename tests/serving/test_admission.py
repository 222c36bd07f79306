"""Admission (the concurrency limit and the queue of requests waiting for a turn), driven
through arrivals, departures and callers that give up, in any order."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from keyed_serving.serving.admission import InFlight, NoTurn, deadline, time_left

FAR = 10**6  # seconds: no deadline passes in these tests


def run(scenario: object) -> None:
    """Runs a scenario, failing (not hanging) if a turn never comes."""
    asyncio.run(asyncio.wait_for(scenario, 10))  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 4),
    max_queue=st.integers(0, 5),
    steps=st.lists(st.sampled_from(["arrive", "leave", "give_up", "settle"]), max_size=80),
)
def test_turns_are_never_lost_never_doubled_and_given_in_arrival_order(
    limit: int, max_queue: int, steps: list[str]
) -> None:
    async def scenario() -> None:
        counts = InFlight(limit, max_queue)
        arrivals: list[tuple[int, asyncio.Task[NoTurn | None]]] = []
        holding: list[int] = []  # arrival numbers holding a turn, in the order they got it
        gave_up: set[int] = set()
        admitted_order: list[int] = []
        for step in steps:
            if step == "arrive":
                number = len(arrivals)
                arrivals.append((number, asyncio.create_task(counts.enter(time.monotonic() + FAR))))
            elif step == "leave" and holding:
                holding.pop(0)
                counts.leave()
            elif step == "give_up":
                waiting = [(n, t) for n, t in arrivals if not t.done() and n not in gave_up]
                if waiting:
                    number, task = waiting[0]
                    task.cancel()
                    gave_up.add(number)
            if step != "settle":  # several steps may come before the loop runs the tasks
                continue
            await settle()
            for number, task in arrivals:
                admitted = task.done() and not task.cancelled() and task.result() is None
                if admitted and number not in admitted_order:
                    admitted_order.append(number)
                    holding.append(number)
            live_waiters = [t for n, t in arrivals if not t.done()]
            # At most `limit` turns held, each by exactly one request.
            assert counts.requests == len(holding) <= limit
            # A free turn is never left unused while someone waits.
            assert not live_waiters or counts.requests == limit
            assert counts.queued == len(live_waiters) <= max_queue
        # Whoever waited was let in in the order they came.
        assert admitted_order == sorted(admitted_order)
        assert counts.requests <= limit and counts.queued <= max_queue
        for _, task in arrivals:
            if not task.done():
                task.cancel()
        await settle()

    run(scenario())


def test_a_refusal_says_why_and_holds_nothing() -> None:
    async def scenario() -> None:
        counts = InFlight(1, 1)
        assert await counts.enter(time.monotonic() + FAR) is None
        waiter = asyncio.create_task(counts.enter(time.monotonic() + FAR))
        await settle()
        full = await counts.enter(time.monotonic() + FAR)
        assert full == NoTurn(429, "1 requests in flight and 1 waiting (the most)")
        counts.leave()
        assert await waiter is None
        assert (counts.requests, counts.queued) == (1, 0)
        counts.leave()
        assert (counts.requests, counts.queued) == (0, 0)

    run(scenario())


def test_the_pace_is_measured_only_while_requests_wait() -> None:
    """Idle time between two requests is not the worker's pace: counted as such, one quiet
    minute would have refused every waiting request for hours as past its deadline."""

    async def scenario() -> None:
        counts = InFlight(1, 10)
        for _ in range(3):  # one at a time, never saturated
            assert await counts.enter(time.monotonic() + FAR) is None
            counts.leave()
        assert counts.turn_gap_s == 0.0
        assert await counts.enter(time.monotonic() + FAR) is None
        waiters = [asyncio.create_task(counts.enter(time.monotonic() + FAR)) for _ in range(3)]
        await settle()
        for waiter in waiters:
            counts.leave()
            assert await waiter is None
        counts.leave()
        assert 0.0 < counts.turn_gap_s < 1.0

    run(scenario())


def test_time_left_is_the_admitted_requests_own_deadline() -> None:
    assert time_left(30.0) == 30.0  # outside a request
    token = deadline.set(time.monotonic() + 5.0)
    try:
        assert 4.0 < time_left(30.0) <= 5.0
    finally:
        deadline.reset(token)


def test_a_turn_handed_to_a_caller_that_gives_up_passes_on() -> None:
    """The turn given back reached a waiting request just as its caller went away: it must
    go on to the next one waiting, not be lost with the caller."""

    async def scenario() -> None:
        counts = InFlight(1, 5)
        assert await counts.enter(time.monotonic() + FAR) is None
        first, second = (asyncio.create_task(counts.enter(time.monotonic() + FAR)) for _ in "ab")
        await settle()
        counts.leave()  # the turn goes to the first...
        first.cancel()  # ...whose caller leaves before it runs again
        await settle()
        assert first.cancelled()
        assert await second is None
        assert (counts.requests, counts.queued) == (1, 0)

    run(scenario())
