"""Server-side file scoring: an uploaded table in, the scored table out, in the same format.

The file goes through the same stages as a /predict request, a batch of rows at a time
(validate -> cut -> runner micro-batches -> reassemble by key), so a large file is never
held whole. Every key comes back: predicted, or with its reason in the ``error`` column.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from anyio import to_thread

from keyed_serving.formats import format_of
from keyed_serving.model.spec import ModelSpec
from keyed_serving.serving.answers import row_answer
from keyed_serving.serving.reassemble import Scored
from keyed_serving.serving.validate import InvalidRequest, ValidBatch, validate_request
from keyed_serving.tables import (
    InvalidKeys,
    TableWriter,
    check_keys,
    check_table_columns,
    columns_of,
    exact_columns,
    feature_values,
    iter_batches,
    read_keys,
    scored_table,
)

PredictBatch = Callable[[ValidBatch], Awaitable[Scored]]


class InvalidFile(ValueError):
    """The file cannot be scored as sent; the message names the problem."""


@dataclass(frozen=True)
class FileSummary:
    rows: int
    predicted: int
    failed: int


def check_file(path: Path, key: str, keep: Sequence[str], spec: ModelSpec) -> None:
    """Everything that can be said against the file before any row is predicted."""
    try:
        format_of(path)
        columns = columns_of(path, key)
    except pd.errors.EmptyDataError:  # not a byte of CSV
        columns = []
    except ValueError as exc:
        raise InvalidFile(str(exc)) from None
    except Exception as exc:  # a parser's own complaint about a broken file
        raise InvalidFile(f"could not read the file: {type(exc).__name__}: {exc}") from None
    if not columns:
        raise InvalidFile("the file has no rows (nor a header)")
    try:
        check_table_columns(columns, [key], spec.feature_names, keep, spec.classes, "the file")
    except ValueError as exc:
        raise InvalidFile(str(exc)) from None
    try:
        if not check_keys(read_keys(path, key)):
            raise InvalidFile("the file has no rows, only a header")
    except InvalidKeys as exc:
        raise InvalidFile(str(exc)) from None


async def score_file(
    source: Path,
    target: Path,
    key: str,
    keep: Sequence[str],
    spec: ModelSpec,
    predict_batch: PredictBatch,
    batch_rows: int,
) -> FileSummary:
    """Scores ``source`` into ``target``. Reading, validating and writing run in worker
    threads, a batch at a time: on the event loop they stalled every other request of the
    entry for as long as a file took. Only the predictions run on the loop."""
    await to_thread.run_sync(check_file, source, key, keep, spec)
    writer = await to_thread.run_sync(TableWriter, target)
    batches = iter_batches(source, batch_rows, key, exact=exact_columns(spec.features, keep))
    rows = predicted = 0
    try:
        while True:
            prepared = await to_thread.run_sync(_next_batch, batches, key, spec)
            if prepared is None:
                break
            batch, keys, valid = prepared
            scored = await predict_batch(valid)
            predicted += await to_thread.run_sync(
                _write_batch, writer, batch, keys, valid, scored, key, keep, spec
            )
            rows += len(keys)
    finally:
        writer.close()
    return FileSummary(rows=rows, predicted=predicted, failed=rows - predicted)


def _next_batch(
    batches: Iterator[pd.DataFrame], key: str, spec: ModelSpec
) -> tuple[pd.DataFrame, list[Any], ValidBatch] | None:
    """The next batch of the file, read and validated; None at its end."""
    batch = next(batches, None)
    if batch is None:
        return None
    keys = check_keys(batch[key].tolist())
    columns = {f.name: feature_values(batch[f.name].tolist(), f.type) for f in spec.features}
    try:
        valid = validate_request(
            {"keys": keys, "columns": columns, "errors": "per_instance"},
            spec,
            max_instances=max(len(keys), 1),
        )
    except InvalidRequest as exc:
        raise InvalidFile(f"{exc.summary}: {exc.details[0].msg}") from None
    return batch, keys, valid


def _write_batch(
    writer: TableWriter,
    batch: pd.DataFrame,
    keys: list[Any],
    valid: ValidBatch,
    scored: Scored,
    key: str,
    keep: Sequence[str],
    spec: ModelSpec,
) -> int:
    """Appends a scored batch to the file; how many of its rows were predicted."""
    dumped = row_answer(valid, scored, spec.classes)
    writer.write(
        scored_table({key: keys}, dumped, spec.classes, batch[list(keep)], error_column=True)
    )
    return sum(1 for entry in dumped if "error" not in entry)
