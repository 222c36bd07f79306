"""The reassemble stage: block results -> one answer in request order, checked key by key.

BentoML splits a micro-batch's output back to its callers by position and never checks
it. This is where the pairing is verified: each block's results must carry that block's
chunk id and exactly its keys, in its order, with a prediction (or an error) for each.
Any difference is a ``KeyMismatch``; the caller must fail the request rather than answer
with a wrong or missing pairing. A result predicted by another model version than its block
was sent for is a ``ModelVersionMismatch``, checked first: its predictions must not be
answered under the version the answer names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keyed_serving.keys import KeyColumn
from keyed_serving.lazy import numpy as np
from keyed_serving.schemas import BlockResult, InstanceError, Key, KeyedBlock

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


class ModelVersionMismatch(KeyMismatch):
    """Results from another model version than the blocks were sent for (a runner that
    restarted with another version, or one that refused the blocks). A ``KeyMismatch`` too,
    so that every path that refuses mispaired results refuses these; but not a bug in the
    pairing: the request may be retried, and the entry answers it 503."""

    def __init__(self, sent: str, got: str, chunk: str) -> None:
        self.missing, self.unexpected, self.repeated = [], [], []
        self.sent, self.got = sent, got
        Exception.__init__(
            self,
            f"runner answered chunk {chunk[:8]} with model {got}, sent for {sent}",
        )


def _show(ids: list[PairId]) -> str:
    return repr([(chunk[:8], key) for chunk, _, key in ids[:3]])


@dataclass
class Scored:
    """Results of a batch's rows, in the batch's row order."""

    predictions: list[Any]  # None where the model raised on the row (see errors)
    probabilities: np.ndarray | None  # rows x classes, for classifiers
    errors: dict[int, InstanceError]  # by row of the batch

    @property
    def failed(self) -> int:
        return len(self.errors)


def reassemble_by_key(blocks: Sequence[KeyedBlock], results: Sequence[BlockResult]) -> Scored:
    """The results of every block, in the order the rows were sent; raises ``KeyMismatch``
    unless every (chunk, key) sent came back exactly once and nothing else did. Results may
    come back in any order, of blocks and of rows within a block: they are matched by chunk
    id and key (a cheap comparison when nothing was reordered, which is the usual case).
    Raises ``ModelVersionMismatch`` first if a result comes from another model version than
    its block was sent for."""
    sent_for = {block.chunk: block.model for block in blocks}
    for result in results:
        if result.chunk in sent_for and result.model != sent_for[result.chunk]:
            raise ModelVersionMismatch(sent_for[result.chunk], result.model, result.chunk)
    by_chunk: dict[str, BlockResult] = {}
    for result in results:
        if result.chunk in by_chunk or not _well_formed(result):
            raise _mismatch(blocks, results)
        by_chunk[result.chunk] = result
    predictions: list[np.ndarray] = []
    probabilities: list[np.ndarray] | None = []
    errors: dict[int, InstanceError] = {}
    start = 0
    for block in blocks:
        found = by_chunk.pop(block.chunk, None)
        order = None if found is None else _row_order(block, found)
        if found is None or isinstance(order, bool):
            raise _mismatch(blocks, results)
        result = found
        block_predictions = np.asarray(result.predictions)
        block_probabilities = result.probabilities
        block_errors = {failed.row: failed.error for failed in result.errors}
        if order is not None:  # rows came back in another order: put them back in ours
            block_predictions = block_predictions[order]
            if block_probabilities is not None:
                block_probabilities = np.asarray(block_probabilities)[order]
            block_errors = {
                row: block_errors[got] for row, got in enumerate(order) if got in block_errors
            }
        predictions.append(block_predictions)
        if block_probabilities is None:
            probabilities = None
        elif probabilities is not None:
            probabilities.append(np.asarray(block_probabilities))
        errors.update({start + row: error for row, error in block_errors.items()})
        start += len(block.keys)
    if by_chunk:  # results of chunks this request did not send
        raise _mismatch(blocks, results)
    return Scored(
        predictions=_joined(predictions).tolist() if predictions else [],
        probabilities=_joined(probabilities) if probabilities else None,
        errors=errors,
    )


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The blocks' arrays end to end (one block, the usual request, is not copied)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _well_formed(result: BlockResult) -> bool:
    """One prediction (and probability row) per key; an error exactly where a row has no
    prediction."""
    n = len(result.keys)
    predictions = np.asarray(result.predictions)
    missing = 0
    if predictions.dtype == object:  # None where the model raised on a row: counted in C
        missing = int(np.count_nonzero(np.equal(predictions, None)))  # type: ignore[call-overload]
    rows = {failed.row for failed in result.errors}
    return (
        len(predictions) == n
        and (result.probabilities is None or len(result.probabilities) == n)
        and len(rows) == len(result.errors) == missing
        and all(0 <= row < n and predictions[row] is None for row in rows)
    )


def _row_order(block: KeyedBlock, result: BlockResult) -> list[int] | bool | None:
    """None: the result has the block's keys in the block's order. A list: the result's row
    for each of the block's rows. False: the keys differ."""
    if KeyColumn.of(block.keys).same_as(KeyColumn.of(result.keys)):
        return None
    sent, got = _as_list(block.keys), _as_list(result.keys)
    where = {(type(key), key): row for row, key in enumerate(got)}
    if len(where) != len(got) or len(got) != len(sent):
        return False
    order = [where.get((type(key), key), -1) for key in sent]
    return False if -1 in order else order


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray | KeyColumn) else list(values)


def _mismatch(blocks: Sequence[KeyedBlock], results: Sequence[BlockResult]) -> KeyMismatch:
    sent = [(block.chunk, type(key), key) for block in blocks for key in _as_list(block.keys)]
    got = [(result.chunk, type(key), key) for result in results for key in _as_list(result.keys)]
    wanted = set(sent)
    seen: set[PairId] = set()
    repeated = []
    for pair in got:
        if pair in seen:
            repeated.append(pair)
        seen.add(pair)
    missing = [pair for pair in sent if pair not in seen]
    unexpected = [pair for pair in got if pair not in wanted]
    if not (missing or unexpected or repeated):
        # The same pairs came back, but out of order or with predictions that do not line
        # up with their keys: a mismatch all the same.
        unexpected = [pair for pair, mine in zip(got, sent, strict=False) if pair != mine]
    return KeyMismatch(missing, unexpected, repeated)
