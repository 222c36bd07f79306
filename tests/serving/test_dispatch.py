"""The coalescer: blocks of concurrent requests share runner calls, and nothing waits for
a timer while the runner is idle."""

from __future__ import annotations

import asyncio

import numpy as np

from keyed_serving.schemas import BlockResult, KeyedBlock
from keyed_serving.serving.dispatch import Coalescer


def block(name: str, rows: int = 1) -> KeyedBlock:
    return KeyedBlock(
        chunk=name, model="m:v1", keys=np.arange(rows, dtype=object), columns=[np.zeros(rows)]
    )


async def turns(n: int) -> None:
    """Lets the event loop run n times (no wall-clock wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


class HeldRunner:
    """Answers each call only when the test releases it; records the calls' blocks."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release: list[asyncio.Event] = []

    async def predict(self, blocks: list[KeyedBlock]) -> list[BlockResult]:
        self.calls.append([b.chunk for b in blocks])
        done = asyncio.Event()
        self.release.append(done)
        await done.wait()
        return [
            BlockResult(
                chunk=b.chunk, model=b.model, keys=b.keys, predictions=np.zeros(len(b.keys))
            )
            for b in blocks
        ]


def test_a_lone_block_goes_at_once_and_later_ones_gather_while_a_call_runs() -> None:
    async def scenario() -> None:
        runner = HeldRunner()
        coalescer = Coalescer(runner.predict, max_calls=2, max_rows=100, linger_s=0.05)
        first = asyncio.ensure_future(coalescer.predict(block("a")))
        await turns(4)
        assert runner.calls == [["a"]]  # the runner was idle: no waiting
        later = [asyncio.ensure_future(coalescer.predict(block(n))) for n in "bc"]
        await asyncio.sleep(0.01)
        assert runner.calls == [["a"]]  # lingering: a call now would wait behind "a"
        later.append(asyncio.ensure_future(coalescer.predict(block("d"))))
        await asyncio.sleep(0.1)
        assert runner.calls == [["a"], ["b", "c", "d"]]  # one call for all three
        for event in runner.release:
            event.set()
        results = await asyncio.gather(first, *later)
        assert [r.chunk for r in results] == ["a", "b", "c", "d"]

    asyncio.run(scenario())


def test_a_full_call_does_not_linger_and_a_failed_call_fails_each_of_its_blocks() -> None:
    async def scenario() -> None:
        runner = HeldRunner()
        coalescer = Coalescer(runner.predict, max_calls=2, max_rows=10, linger_s=10.0)
        first = asyncio.ensure_future(coalescer.predict(block("a", rows=10)))
        await turns(4)
        big = asyncio.ensure_future(coalescer.predict(block("b", rows=10)))
        await turns(4)
        assert runner.calls == [["a"], ["b"]]  # "b" fills a call: sent without lingering
        for event in runner.release:
            event.set()
        await asyncio.gather(first, big)

        async def failing(blocks: list[KeyedBlock]) -> list[BlockResult]:
            raise ConnectionResetError("hop dropped")

        coalescer = Coalescer(failing, max_calls=1, max_rows=100)
        outcomes = await asyncio.gather(
            *(coalescer.predict(block(n)) for n in "xyz"), return_exceptions=True
        )
        assert all(isinstance(o, ConnectionResetError) for o in outcomes)

    asyncio.run(scenario())
