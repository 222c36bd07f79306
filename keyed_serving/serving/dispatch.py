"""Carries blocks from the entry to the runner and back: coalesced, retried, bounded.

Coalescing: each runner call costs an HTTP hop and a model call whose cost is mostly
fixed, so the entry does not call the runner once per request. Blocks of concurrent
requests queue in a ``Coalescer``, which sends whatever is queued in one call as soon as
fewer than ``max_calls`` calls are in flight: no timer, so a lone request goes at once,
and under load each call carries many requests' blocks. The runner's adaptive batching
then merges the calls of several entry workers.

A keyed block is idempotent (predicting it twice gives the same keyed results), so a
chunk that the runner shed (503) or that the inter-service hop dropped (aiohttp errors
under concurrency, see shared BENTOML_NOTES) is retried with jittered exponential
backoff. The whole request has one deadline; past it, or when retries run out, the
request fails with ``RunnerUnavailable`` and the entry answers 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

from bentoml.exceptions import BentoMLException

from keyed_serving.lazy import aiohttp
from keyed_serving.schemas import BlockResult, KeyedBlock
from keyed_serving.serving.reassemble import KeyMismatch

if TYPE_CHECKING:
    from tenacity import RetryCallState

logger = logging.getLogger("keyed_serving.serving.dispatch")

PredictBlock = Callable[[KeyedBlock], Awaitable[BlockResult]]
PredictBlocks = Callable[[list[KeyedBlock]], Awaitable[Sequence[BlockResult]]]

_TRANSIENT_STATUSES = {
    HTTPStatus.TOO_MANY_REQUESTS,
    HTTPStatus.BAD_GATEWAY,
    HTTPStatus.SERVICE_UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT,
}


class RunnerUnavailable(Exception):
    """The runner did not answer a chunk within the request's deadline."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: overload or a broken connection, not a deterministic failure."""
    if isinstance(exc, BentoMLException):
        return exc.error_code in _TRANSIENT_STATUSES
    return isinstance(exc, aiohttp.ClientError | ConnectionError | asyncio.TimeoutError)


async def send_blocks(
    blocks: Sequence[KeyedBlock],
    predict_block: PredictBlock,
    *,
    deadline_s: float,
    initial_backoff_s: float,
    max_backoff_s: float,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
) -> list[BlockResult]:
    """Results per block, in block order. Raises ``RunnerUnavailable`` or a runner error."""
    started = time.monotonic()

    def log_retry(exc: BaseException, attempt: int) -> None:
        on_retry(exc)
        logger.warning(
            "runner call failed (attempt %d), retrying: %s: %s", attempt, type(exc).__name__, exc
        )

    def log_tenacity_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            log_retry(exc, 1 + state.attempt_number)  # after the first, untenacious attempt

    async def send(block: KeyedBlock) -> BlockResult:
        # Imported on the first retry, not with the module: it keeps tenacity out of
        # `bentoml serve`'s supervisor (see keyed_serving.lazy), and a retry waits anyway.
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_before_delay,
            wait_exponential_jitter,
        )

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            # Measured from the request's start, so all chunks share one deadline.
            stop=stop_before_delay(max(0.0, deadline_s - (time.monotonic() - started))),
            wait=wait_exponential_jitter(initial=initial_backoff_s, max=max_backoff_s),
            before_sleep=log_tenacity_retry,
            reraise=True,
        )
        await asyncio.sleep(min(initial_backoff_s, max_backoff_s) * random.random())
        async for attempt in retrying:
            with attempt:
                return await predict_block(block)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def first_then_retried(block: KeyedBlock) -> BlockResult:
        # The first attempt without tenacity's machinery: it is most of the calls.
        try:
            return await predict_block(block)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log_retry(exc, 1)
        return await send(block)

    try:
        async with asyncio.timeout(deadline_s):
            if len(blocks) == 1:
                return [await first_then_retried(blocks[0])]
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(first_then_retried(block)) for block in blocks]
    except TimeoutError as exc:
        raise RunnerUnavailable(f"runner did not answer within {deadline_s:g} s") from exc
    except ExceptionGroup as group_exc:
        # TaskGroup cancelled the other blocks; report the first real failure.
        first = group_exc.exceptions[0]
        if is_transient(first):
            raise RunnerUnavailable(f"runner unavailable: {first}") from first
        raise first from None
    except Exception as exc:  # the single block's failure
        if is_transient(exc):
            raise RunnerUnavailable(f"runner unavailable: {exc}") from exc
        raise
    return [task.result() for task in tasks]


class Coalescer:
    """Merges the blocks of concurrent requests into few runner calls (see module doc).

    ``predict`` is what ``send_blocks`` calls per block. A call's failure fails every block
    in it; each request then retries its own blocks within its own deadline."""

    def __init__(
        self, predict_blocks: PredictBlocks, max_calls: int, max_rows: int, linger_s: float = 0.0
    ) -> None:
        self.predict_blocks = predict_blocks
        self.max_calls = max_calls
        self.max_rows = max_rows
        self.linger_s = linger_s
        self.queue: list[tuple[KeyedBlock, asyncio.Future[BlockResult]]] = []
        self.in_flight = 0
        self.scheduled = False
        self.lingering: asyncio.TimerHandle | None = None

    async def predict(self, block: KeyedBlock) -> BlockResult:
        future: asyncio.Future[BlockResult] = asyncio.get_running_loop().create_future()
        self.queue.append((block, future))
        if not self.scheduled:
            # At the end of this turn of the event loop, so that every block queued in it
            # (a request's blocks, requests that arrived together) goes in one call.
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send_queued)
        return await future

    def _send_queued(self, lingered: bool = False) -> None:
        self.scheduled = False
        while self.queue and self.in_flight < self.max_calls:
            if (
                self.in_flight
                and not lingered
                and self.linger_s > 0
                and self._rows() < self.max_rows
            ):
                # The runner is busy with a call: one sent now would only wait behind it
                # there. Let it grow here for a moment instead: the clients the last call
                # answered are about to send their next requests.
                if self.lingering is None:
                    loop = asyncio.get_running_loop()
                    self.lingering = loop.call_later(self.linger_s, self._linger_over)
                return
            lingered = False
            taken, rows = 0, 0
            for block, _ in self.queue:
                if taken and rows + len(block.keys) > self.max_rows:
                    break
                taken += 1
                rows += len(block.keys)
            call, self.queue = self.queue[:taken], self.queue[taken:]
            call = [(block, future) for block, future in call if not future.done()]
            if not call:
                continue
            self.in_flight += 1
            asyncio.get_running_loop().create_task(self._call(call))

    def _rows(self) -> int:
        return sum(len(block.keys) for block, _ in self.queue)

    def _linger_over(self) -> None:
        self.lingering = None
        self._send_queued(lingered=True)

    async def _call(self, call: list[tuple[KeyedBlock, asyncio.Future[BlockResult]]]) -> None:
        try:
            results = await self.predict_blocks([block for block, _ in call])
            if len(results) != len(call):
                raise KeyMismatch([], [], [])  # answers cannot be told apart: none is used
        except BaseException as exc:
            for _, future in call:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            # By position, as BentoML hands results back; reassemble_by_key then checks
            # that each result carries its block's chunk id and keys.
            for (_, future), result in zip(call, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self.in_flight -= 1
            self._send_queued()
