"""Captured predictions as Arrow tables, and Parquet files written whole or not at all.

The one place where what a request held (its keys, the feature columns the model got, the
predictions, probabilities and errors) becomes rows of the capture layout
(:mod:`.layout`). The server's capture (:mod:`.writer`) and ``score_spark(capture_dir=)``
both go through ``captured_table`` and ``write_predictions``:

    model = CapturedModel.of(spec)                   # or CapturedModel(name, version, ...)
    batch = Captured(request_id, source, ts, keys, columns, predictions, probabilities,
                     errors={row: (code, message)}, refused=[(key, code, message)])
    table = captured_table(model, [batch, ...], features=True)
    write_predictions(root, model, table, stem="<writer>-<n>")   # one file per date

Features are kept as the model got them: numbers as float64 (a missing value, NaN to the
model, as null), categories as text, datetimes as timestamps (UTC for a model that takes
time zones, else as given). Rows refused before the model (``refused``) have no features
and no prediction, only their error.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from keyed_serving.capture import layout
from keyed_serving.lazy import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from keyed_serving.model.spec import ModelSpec
    from keyed_serving.schemas import FeatureInfo

# Columns with few distinct values in a file, dictionary-encoded; the others (keys,
# probabilities, features) are not tried: a failed dictionary attempt on a column of
# unique values cost a third of a write (measured, 200,000 rows: 177 ms vs 117 ms).
REPEATING = frozenset(
    {
        layout.REQUEST_ID,
        layout.KEY_TYPE,
        layout.TS,
        layout.PREDICTION,
        layout.ERROR,
        layout.ERROR_MESSAGE,
        layout.SOURCE,
        layout.LABEL,
        layout.RECEIVED,
        layout.LABEL_MODEL,
        layout.WRITER,
        layout.DROP_REASON,
    }
)


@dataclass(frozen=True)
class CapturedModel:
    """What a captured row was predicted by: the partition values (name, version) and what
    a reader needs to know without the model (task, classes, features)."""

    name: str
    version: str
    task: str  # "classification" or "regression"
    classes: tuple[Any, ...] | None
    features: tuple[FeatureInfo, ...]

    @classmethod
    def of(cls, spec: ModelSpec) -> CapturedModel:
        """The model a served spec describes (its tag is name:version)."""
        name, _, version = spec.tag.partition(":")
        return cls(name, version, spec.task, spec.classes, spec.features)

    @property
    def class_texts(self) -> list[str]:
        return layout.class_texts(self.classes or ())

    def schema(self, *, features: bool = True) -> pa.Schema:
        """The columns of this model's prediction files, with the layout's metadata."""
        import pyarrow as pa

        prediction = pa.string() if self.task == "classification" else pa.float64()
        fields = [
            pa.field(layout.REQUEST_ID, pa.string(), nullable=False),
            pa.field(layout.KEY, pa.string(), nullable=False),
            pa.field(layout.KEY_TYPE, pa.string(), nullable=False),
            pa.field(layout.TS, pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field(layout.PREDICTION, prediction),
            pa.field(layout.ERROR, pa.string()),
            pa.field(layout.ERROR_MESSAGE, pa.string()),
            pa.field(layout.SOURCE, pa.string()),
        ]
        fields += [
            pa.field(layout.PROBABILITY_PREFIX + text, pa.float64()) for text in self.class_texts
        ]
        if features:
            fields += [
                pa.field(layout.FEATURE_PREFIX + feature.name, _feature_type(feature))
                for feature in self.features
            ]
        metadata = {
            layout.META_TASK: self.task.encode(),
            layout.META_CLASSES: orjson.dumps(self.class_texts),
            layout.META_FEATURES: orjson.dumps([feature.name for feature in self.features]),
        }
        return pa.schema(fields, metadata=metadata)


# Not frozen, and slotted: one is made on the request path for every request answered,
# and a frozen dataclass's __init__ costs twice as much (treat it as immutable all the same).
@dataclass(slots=True)
class Captured:
    """What one request (or one batch of a file or a Spark partition) answered, as it holds
    it: nothing is copied or converted until ``captured_table``.

    ``keys``, ``columns`` (one per feature, in the model's order), ``predictions`` (None
    where the model raised) and ``probabilities`` (rows x classes, or None) are the rows the
    model got, in the same order; ``errors`` the model's errors by row (code, message);
    ``refused`` the keys answered with an error before the model (key, code, message).
    ``ts`` is when the answer was given (seconds since the epoch, or a datetime)."""

    request_id: str
    source: str
    ts: float | datetime.datetime
    keys: Sequence[Any]
    columns: Sequence[Any]
    predictions: Sequence[Any]
    probabilities: Any = None
    errors: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    refused: Sequence[tuple[Any, str, str]] = ()

    @property
    def rows(self) -> int:
        return len(self.keys) + len(self.refused)

    @property
    def seconds(self) -> float:
        return self.ts.timestamp() if isinstance(self.ts, datetime.datetime) else self.ts


def captured_table(
    model: CapturedModel, batches: Sequence[Captured], *, features: bool = True
) -> pa.Table:
    """The rows of ``batches`` (one per key answered, predicted or not) in the model's
    capture schema (``CapturedModel.schema``). Costs a few passes in C per column when the
    keys of a batch are all of one kind (all strings or all integers)."""
    import pyarrow as pa

    schema = model.schema(features=features)
    predicted = [batch for batch in batches if len(batch.keys)]
    refused = [batch for batch in batches if batch.refused]
    parts = []
    if predicted:
        parts.append(_predicted_table(model, predicted, schema, features))
    if refused:
        parts.append(_refused_table(model, refused, schema))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _predicted_table(
    model: CapturedModel, batches: Sequence[Captured], schema: pa.Schema, features: bool
) -> pa.Table:
    import pyarrow as pa

    # One pass over the batches gathers every column's parts (a flush of one-instance
    # requests is thousands of batches: a pass per column cost more than the columns).
    feature_count = len(model.features) if features else 0
    sizes: list[int] = []
    request_ids: list[str] = []
    sources: list[str] = []
    micros: list[int] = []
    keys: list[Any] = []
    predictions: list[Any] = []
    probabilities: list[Any] = []
    values: list[list[Any]] = [[] for _ in range(feature_count)]
    failed: list[tuple[int, str, str]] = []
    n = 0
    for batch in batches:
        size = len(batch.keys)
        sizes.append(size)
        request_ids.append(batch.request_id)
        sources.append(batch.source)
        ts = batch.ts
        micros.append(round((ts if type(ts) is float else batch.seconds) * 1_000_000))
        keys.extend(batch.keys if type(batch.keys) is list else _listed(batch.keys))
        given = batch.predictions
        predictions.extend(given if type(given) is list else _listed(given))
        probabilities.append(batch.probabilities)
        for index in range(feature_count):
            values[index].append(batch.columns[index])
        if batch.errors:
            failed += [(n + row, code, message) for row, (code, message) in batch.errors.items()]
        n += size
    errors = np.zeros(n, dtype=bool)
    codes = np.full(n, None, dtype=object)
    messages = np.full(n, None, dtype=object)
    for row, code, message in failed:
        errors[row], codes[row], messages[row] = True, code, message
    key_texts, key_types = _key_columns([keys])
    columns: dict[str, Any] = {
        layout.REQUEST_ID: _repeated(request_ids, sizes),
        layout.KEY: key_texts,
        layout.KEY_TYPE: key_types,
        layout.TS: _repeated_micros(micros, sizes),
        layout.PREDICTION: _predictions(model, predictions, errors),
        layout.ERROR: pa.array(codes, pa.string()),
        layout.ERROR_MESSAGE: pa.array(messages, pa.string()),
        layout.SOURCE: _repeated(sources, sizes),
    }
    texts = model.class_texts
    if texts:
        matrix = _probabilities(probabilities, sizes, len(texts))
        for index, text in enumerate(texts):
            column = matrix[:, index]
            columns[layout.PROBABILITY_PREFIX + text] = pa.array(
                column, pa.float64(), mask=errors | np.isnan(column)
            )
    for index in range(feature_count):
        feature = model.features[index]
        columns[layout.FEATURE_PREFIX + feature.name] = _feature_column(feature, values[index])
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _refused_table(
    model: CapturedModel, batches: Sequence[Captured], schema: pa.Schema
) -> pa.Table:
    import pyarrow as pa

    sizes = [len(batch.refused) for batch in batches]
    keys, key_types = _key_columns([[key for key, _, _ in batch.refused] for batch in batches])
    given = {
        layout.REQUEST_ID: _repeated([batch.request_id for batch in batches], sizes),
        layout.KEY: keys,
        layout.KEY_TYPE: key_types,
        layout.TS: _timestamps(batches, sizes),
        layout.ERROR: pa.array([code for b in batches for _, code, _ in b.refused], pa.string()),
        layout.ERROR_MESSAGE: pa.array(
            [message for b in batches for _, _, message in b.refused], pa.string()
        ),
        layout.SOURCE: _repeated([batch.source for batch in batches], sizes),
    }
    n = sum(sizes)
    arrays = [
        given[name] if name in given else pa.nulls(n, schema.field(name).type)
        for name in schema.names
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _listed(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _repeated(values: Sequence[str], sizes: Sequence[int]) -> pa.Array:
    """One text per batch, repeated for each of its rows (dictionary-decoded in C)."""
    import pyarrow as pa

    indices = np.repeat(np.arange(len(values), dtype=np.int32), sizes)
    return pa.DictionaryArray.from_arrays(indices, pa.array(values, pa.string())).cast(pa.string())


def _timestamps(batches: Sequence[Captured], sizes: Sequence[int]) -> pa.Array:
    return _repeated_micros([round(batch.seconds * 1_000_000) for batch in batches], sizes)


def _repeated_micros(micros: Sequence[int], sizes: Sequence[int]) -> pa.Array:
    """One time (microseconds since the epoch) per batch, repeated for each of its rows."""
    import pyarrow as pa

    repeated = np.repeat(np.array(micros, dtype=np.int64), sizes)
    return pa.array(repeated, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _key_columns(groups: Sequence[Sequence[Any]]) -> tuple[pa.Array, pa.Array]:
    """The keys of every group as (text, type) columns (``layout.key_text``): in C when the
    keys are all strings or all integers (one array for all the groups: a flush of many
    one-instance requests), key by key otherwise (mixed or composite keys)."""
    import pyarrow as pa

    keys: list[Any] = []
    for group in groups:
        keys.extend(_listed(group))
    with contextlib.suppress(pa.ArrowException):  # all strings: the usual case, one pass
        return pa.array(keys, pa.string()), _constant("str", len(keys))
    kinds = set(map(type, keys))
    if kinds == {str}:
        return pa.array(keys, pa.string()), _constant("str", len(keys))
    if kinds == {int}:
        return pa.array(keys, pa.int64()).cast(pa.string()), _constant("int", len(keys))
    pairs = [layout.key_text(key) for key in keys]
    return (
        pa.array([text for text, _ in pairs], pa.string()),
        pa.array([kind for _, kind in pairs], pa.string()),
    )


def _constant(text: str, n: int) -> pa.Array:
    import pyarrow as pa

    return pa.DictionaryArray.from_arrays(
        np.zeros(n, dtype=np.int32), pa.array([text], pa.string())
    ).cast(pa.string())


def _predictions(model: CapturedModel, predictions: list[Any], errors: np.ndarray) -> pa.Array:
    """A classifier's predictions as class text, a regressor's as float64; null on error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if model.task != "classification":
        values = np.array([np.nan if p is None else p for p in predictions], dtype=np.float64)
        return pa.array(values, pa.float64(), mask=errors)
    classes = list(model.classes or ())
    if classes and all(type(c) is str for c in classes):  # text classes are their own text
        with contextlib.suppress(pa.ArrowException):
            return pa.array(predictions, pa.string())
    try:
        # In C: each prediction's position among the classes, then that class's text.
        given = pa.array(predictions)
        value_set = pa.array(classes, type=given.type) if classes else None
        if value_set is None or pa.types.is_null(given.type):
            raise pa.ArrowInvalid("no classes")
        positions = pc.index_in(given, value_set=value_set)
        found = pa.array(model.class_texts, pa.string()).take(positions)
        if found.null_count == int(errors.sum()):
            return found
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        pass
    return pa.array([None if p is None else layout.class_text(p) for p in predictions], pa.string())


def _probabilities(given: Sequence[Any], sizes: Sequence[int], classes: int) -> np.ndarray:
    """Each batch's probabilities (rows x classes, or None) as one float64 matrix; NaN for
    a batch without them."""
    if all(type(p) is np.ndarray and p.ndim == 2 for p in given):  # the usual case, in C
        return np.concatenate(given).astype(np.float64, copy=False)
    parts = []
    for probabilities, size in zip(given, sizes, strict=True):
        if probabilities is None:
            parts.append(np.full((size, classes), np.nan))
        else:
            parts.append(np.asarray(probabilities, dtype=np.float64).reshape(size, classes))
    return np.concatenate(parts) if parts else np.empty((0, classes))


def _feature_type(feature: FeatureInfo) -> pa.DataType:
    import pyarrow as pa

    from keyed_serving.model.spec import takes_time_zones

    if feature.type == "number":
        return pa.float64()
    if feature.type == "datetime":
        return pa.timestamp("us", tz="UTC" if takes_time_zones(feature.dtype) else None)
    return pa.string()


def _feature_column(feature: FeatureInfo, values: Sequence[Any]) -> pa.Array:
    """The values a feature had in each batch, as one column of its capture type."""
    import pyarrow as pa

    kind = _feature_type(feature)
    if feature.type == "number":
        if all(type(v) is np.ndarray and v.dtype == np.float64 for v in values):
            numbers = np.concatenate(values)  # the usual case: validated columns
        else:
            numbers = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
        return pa.array(numbers, pa.float64(), from_pandas=True)  # NaN -> null
    cells = [cell for column in values for cell in _listed(column)]
    if feature.type == "datetime":
        return pa.array([_timestamp(cell, kind) for cell in cells], kind)
    try:
        return pa.array(cells, pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a CSV's number in a category column
        # The table reader's rule of a missing cell; pandas loads with it, only here (the
        # entry does not load pandas otherwise).
        from keyed_serving.tables import is_missing

        return pa.array([None if is_missing(c) else str(c) for c in cells], pa.string())


def _timestamp(cell: Any, kind: pa.TimestampType) -> datetime.datetime | None:
    """A datetime feature's value (ISO text, a datetime, a pandas Timestamp) as the
    column's timestamp; None for a missing one (None, NaN, NaT) or one that is no date."""
    from keyed_serving.model.spec import parse_datetime

    try:
        if cell is None or cell != cell:  # NaN and NaT are not equal to themselves
            return None
        value = parse_datetime(cell) if isinstance(cell, str) else cell
        if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
            value = value.to_pydatetime()
        if not isinstance(value, datetime.datetime):
            return None
        if kind.tz is not None:
            aware = value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
            return aware.astimezone(datetime.UTC)
        return value.replace(tzinfo=None) if value.tzinfo is not None else value
    except (TypeError, ValueError, OverflowError):
        return None


def write_atomic(
    table: pa.Table,
    directory: Path,
    stem: str,
    *,
    durable: bool = False,
    admit: Callable[[int], bool] | None = None,
    compression: str = "zstd",
) -> Path | None:
    """Writes ``table`` to ``directory/<stem>.parquet`` under a hidden temporary name
    (``.<stem>.parquet.tmp``) and renames it in: a reader listing ``*.parquet`` never sees
    half a file. ``durable``: the file and the directory entry are fsync'ed before it
    returns (a label answered 200 survives a power cut). ``admit``: asked with the
    written file's size before the rename; False removes it and returns None (a byte
    budget). ``compression``: Parquet's codec (the server's frequent writes take snappy,
    half zstd's CPU for 25% more bytes). Raises ``OSError`` (nothing left behind) when it
    cannot be written."""
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}{layout.SUFFIX}"
    temporary = directory / f".{stem}{layout.TEMPORARY_SUFFIX}"
    try:
        # A path, not a Python file: Arrow writes it natively, without taking the GIL
        # from the event loop for every page (a Python file object is written through
        # Python calls).
        pq.write_table(
            table,
            str(temporary),
            compression=compression,
            use_dictionary=[name for name in table.column_names if name in REPEATING],
        )
        if durable:
            _fsync(temporary)
        if admit is not None and not admit(temporary.stat().st_size):
            temporary.unlink()
            return None
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(directory)
    return target


def _fsync(path: Path) -> None:
    """A file's or a directory's entries to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def dates_of(table: pa.Table) -> list[str]:
    """The UTC dates (YYYY-MM-DD) of a captured table's ``ts``, in order."""
    import pyarrow.compute as pc

    days = pc.unique(pc.strftime(table[layout.TS], format="%Y-%m-%d"))
    return sorted(days.to_pylist())


def write_predictions(
    root: Path, model: CapturedModel, table: pa.Table, stem: str | None = None
) -> list[Path]:
    """Writes captured rows under ``root`` in the layout: one file per UTC date of their
    ``ts``, in ``predictions/model=/version=/date=/<stem>.parquet`` (each written whole, see
    ``write_atomic``). ``stem`` names the files; unset, a fresh unique one. Several writers
    may write into the same directories at once as long as their stems differ."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    stem = stem or uuid.uuid4().hex
    days = pc.strftime(table[layout.TS], format="%Y-%m-%d")
    written = []
    for date in sorted(pc.unique(days).to_pylist()):
        rows = table if _one_date(days) else table.filter(pc.equal(days, date))
        directory = layout.predictions_dir(root, model.name, model.version, date)
        path = write_atomic(rows, directory, stem)
        if path is not None:
            written.append(path)
    return written


def _one_date(days: Any) -> bool:
    import pyarrow.compute as pc

    return bool(pc.count_distinct(days).as_py() == 1)
