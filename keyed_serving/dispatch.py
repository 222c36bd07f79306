"""Carries chunks from the entry to the runner and back: concurrently, retried, bounded.

A keyed chunk is idempotent (predicting it twice gives the same keyed results), so a
chunk that the runner shed (503) or that the inter-service hop dropped (aiohttp errors
under concurrency, see shared BENTOML_NOTES) is retried with jittered exponential
backoff. The whole request has one deadline; past it, or when retries run out, the
request fails with ``RunnerUnavailable`` and the entry answers 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import aiohttp
from bentoml.exceptions import BentoMLException
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from keyed_serving.chunking import Chunk
from keyed_serving.schemas import KeyedResult, KeyedRow

logger = logging.getLogger("keyed_serving.dispatch")

PredictRows = Callable[[list[KeyedRow]], Awaitable[Sequence[KeyedResult]]]

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


async def send_chunks(
    chunks: Sequence[Chunk],
    predict_rows: PredictRows,
    *,
    deadline_s: float,
    initial_backoff_s: float,
    max_backoff_s: float,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
) -> list[Sequence[KeyedResult]]:
    """Results per chunk, in chunk order. Raises ``RunnerUnavailable`` or a runner error."""
    started = time.monotonic()

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            on_retry(exc)
            logger.warning(
                "runner call failed (attempt %d), retrying: %s: %s",
                state.attempt_number,
                type(exc).__name__,
                exc,
            )

    async def send(chunk: Chunk) -> Sequence[KeyedResult]:
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            # Measured from the request's start, so all chunks share one deadline.
            stop=stop_before_delay(max(0.0, deadline_s - (time.monotonic() - started))),
            wait=wait_exponential_jitter(initial=initial_backoff_s, max=max_backoff_s),
            before_sleep=log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await predict_rows(chunk.rows)
        raise AssertionError("unreachable: tenacity either returns or raises")

    try:
        async with asyncio.timeout(deadline_s):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(send(chunk)) for chunk in chunks]
    except TimeoutError as exc:
        raise RunnerUnavailable(f"runner did not answer within {deadline_s:g} s") from exc
    except ExceptionGroup as group_exc:
        # TaskGroup cancelled the other chunks; report the first real failure.
        first = group_exc.exceptions[0]
        if is_transient(first):
            raise RunnerUnavailable(f"runner unavailable: {first}") from first
        raise first from None
    return [task.result() for task in tasks]
