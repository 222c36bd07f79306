"""The reassemble stage: chunk results -> one answer in request order, checked key by key.

BentoML splits a micro-batch's output back to its callers by position and never checks
it. This is where the pairing is verified: every (chunk, key) sent must come back exactly
once, and nothing else may come back. Any difference is a ``KeyMismatch``; the caller
must fail the request rather than answer with a wrong or missing pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from keyed_serving.chunking import Chunk
from keyed_serving.schemas import (
    ErrorDetail,
    FailedInstance,
    InstanceError,
    Key,
    KeyedResult,
    PredictionPublic,
)
from keyed_serving.validate import InstanceFailure, ValidRow

Result = TypeVar("Result", bound=KeyedResult)
# (chunk id, type of key, key): 1 and "1" are different keys.
PairId = tuple[str, type, Key]


class KeyMismatch(Exception):
    def __init__(self, missing: list[PairId], unexpected: list[PairId], repeated: list[PairId]):
        self.missing, self.unexpected, self.repeated = missing, unexpected, repeated
        super().__init__(
            f"runner results do not match the keys sent: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(repeated)} repeated "
            f"(first: missing {_show(missing)}, unexpected {_show(unexpected)}, "
            f"repeated {_show(repeated)})"
        )


def _pair_id(chunk: str, key: Key) -> PairId:
    return (chunk, type(key), key)


def _show(ids: list[PairId]) -> str:
    return repr([(chunk[:8], key) for chunk, _, key in ids[:3]])


def reassemble_by_key(chunks: Sequence[Chunk], results: Sequence[Sequence[Result]]) -> list[Result]:
    """Results of every chunk, in the order the rows were sent; raises ``KeyMismatch``."""
    by_id: dict[PairId, Result] = {}
    repeated: list[PairId] = []
    for chunk_results in results:
        for result in chunk_results:
            pair = _pair_id(result.chunk, result.key)
            if pair in by_id:
                repeated.append(pair)
            by_id[pair] = result
    ordered: list[Result] = []
    missing: list[PairId] = []
    for chunk in chunks:
        for row in chunk.rows:
            pair = _pair_id(chunk.id, row.key)
            found = by_id.pop(pair, None)
            if found is None:
                missing.append(pair)
            else:
                ordered.append(found)
    unexpected = list(by_id)
    if missing or unexpected or repeated:
        raise KeyMismatch(missing, unexpected, repeated)
    return ordered


def answer_in_request_order(
    received: int,
    rows: Sequence[ValidRow],
    results: Sequence[KeyedResult],
    failures: Sequence[InstanceFailure],
    classes: Sequence[object] | None,
) -> list[PredictionPublic | FailedInstance]:
    """One entry per instance received: its prediction, or why it has none."""
    if len(results) != len(rows):
        raise ValueError(f"{len(results)} results for {len(rows)} rows")
    entries: list[PredictionPublic | FailedInstance | None] = [None] * received
    for row, result in zip(rows, results, strict=True):
        entries[row.index] = _public(result, classes)
    for failure in failures:
        first = failure.details[0]
        message = "; ".join(detail.msg for detail in failure.details)
        entries[failure.index] = FailedInstance(
            key=failure.key, error=InstanceError(code=first.type, message=message)
        )
    missing = [index for index, entry in enumerate(entries) if entry is None]
    if missing:
        raise ValueError(f"instances at {missing[:5]} have neither a result nor a failure")
    return entries  # type: ignore[return-value]  # no None left, checked above


def _public(
    result: KeyedResult, classes: Sequence[object] | None
) -> PredictionPublic | FailedInstance:
    if result.error is not None:
        return FailedInstance(key=result.key, error=result.error)
    probabilities = None
    if result.probabilities is not None and classes is not None:
        pairs = zip(classes, result.probabilities, strict=True)
        probabilities = {str(label): p for label, p in pairs}
    return PredictionPublic(
        key=result.key,
        prediction=result.prediction,  # type: ignore[arg-type]  # set when error is None
        probabilities=probabilities,
    )


def model_error_details(
    rows: Sequence[ValidRow], results: Sequence[KeyedResult]
) -> list[ErrorDetail]:
    """The rows the model could not take, as a rejection's details (all-or-nothing mode)."""
    return [
        ErrorDetail(
            type=result.error.code,
            msg=result.error.message,
            loc=["instances", row.index],
            key=row.key,
        )
        for row, result in zip(rows, results, strict=True)
        if result.error is not None
    ]
