"""Server-side file scoring: an uploaded table in, the scored table out, in the same format.

The file goes through the same stages as a /predict request, a batch of rows at a time
(validate -> cut -> runner micro-batches -> reassemble by key), so a large file is never
held whole. Every key comes back: predicted, or with its reason in the ``error`` column.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from keyed_serving.model import ModelSpec
from keyed_serving.reassemble import Scored, row_answer
from keyed_serving.tables import (
    InvalidKeys,
    TableWriter,
    check_keys,
    columns_of,
    feature_values,
    format_of,
    iter_batches,
    read_keys,
    scored_table,
)
from keyed_serving.validate import InvalidRequest, ValidBatch, validate_request

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
    except ValueError as exc:
        raise InvalidFile(str(exc)) from None
    except Exception as exc:  # a parser's own complaint about a broken file
        raise InvalidFile(f"could not read the file: {type(exc).__name__}: {exc}") from None
    if key not in columns:
        raise InvalidFile(f"no key column {key!r}; the file has {columns[:20]}")
    missing = [n for n in spec.feature_names if n not in columns]
    if missing:
        raise InvalidFile(f"the file lacks the model's features {missing}")
    missing_keep = [c for c in keep if c not in columns]
    if missing_keep:
        raise InvalidFile(f"columns to keep not in the file: {missing_keep}")
    try:
        check_keys(read_keys(path, key))
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
    check_file(source, key, keep, spec)
    writer = TableWriter(target)
    rows = predicted = 0
    try:
        for batch in iter_batches(source, batch_rows, key):
            keys = check_keys(batch[key].tolist())
            columns = {
                f.name: feature_values(batch[f.name].tolist(), f.type) for f in spec.features
            }
            try:
                valid = validate_request(
                    {"keys": keys, "columns": columns, "errors": "per_instance"},
                    spec,
                    max_instances=max(len(keys), 1),
                )
            except InvalidRequest as exc:
                raise InvalidFile(f"{exc.summary}: {exc.details[0].msg}") from None
            scored = await predict_batch(valid)
            dumped = row_answer(valid, scored, spec.classes)
            writer.write(
                scored_table(
                    {key: keys}, dumped, spec.classes, batch[list(keep)], error_column=True
                )
            )
            rows += len(keys)
            predicted += sum(1 for entry in dumped if "error" not in entry)
    finally:
        writer.close()
    return FileSummary(rows=rows, predicted=predicted, failed=rows - predicted)
