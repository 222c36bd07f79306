"""What keyed-evaluate reads before any join: which model a capture directory holds and
what it is (task, classes, from the files' key-value metadata), and a label file turned
into labels as the capture keeps them (key text and type, class text or a number, time).

The big datasets (predictions, captured labels, drops) are not read here: the engine
reads them where they lie (:mod:`.engines`). Only a footer per version, and the label file
the user names, pass through Python.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq

from keyed_serving.capture import layout
from keyed_serving.keys import find_key_problems, key_from_cell
from keyed_serving.tables import is_missing, iter_batches, key_columns

MICROSECONDS = 1_000_000


class Unusable(ValueError):
    """The input cannot be evaluated as it is (keyed-evaluate exits 2 with this message)."""


@dataclass
class Capture:
    """A capture directory's predictions of one model, as their files describe them."""

    root: Path
    model: str
    task: str
    classes: list[str] | None  # every version's classes, in order of first appearance
    version_classes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return any((self.root / layout.LABELS).glob(f"**/*{layout.SUFFIX}"))

    @property
    def has_drops(self) -> bool:
        return any((self.root / layout.DROPS).glob(f"**/*{layout.SUFFIX}"))


def _partition(path: Path, name: str) -> str | None:
    for part in path.parts:
        if part.startswith(f"{name}="):
            return unquote(part[len(name) + 1 :])
    return None


def open_capture(root: str | Path, model: str | None = None) -> Capture:
    """The capture directory's model (``model``, or the only one it holds), its task and
    classes, from the key-value metadata of the first file of each version."""
    root = Path(root)
    first: dict[tuple[str, str], Path] = {}
    # One file per version is enough (a store may hold many thousands): the first found.
    for directory in sorted((root / layout.PREDICTIONS).glob("model=*/version=*")):
        path = next(directory.glob(f"date=*/*{layout.SUFFIX}"), None)
        name = _partition(directory.relative_to(root), "model")
        version = _partition(directory.relative_to(root), "version")
        if path is not None and name is not None and version is not None:
            first[name, version] = path
    if not first:
        raise Unusable(f"{root} holds no predictions ({layout.glob_of(root, layout.PREDICTIONS)})")
    models = sorted({name for name, _ in first})
    if model is None:
        if len(models) > 1:
            raise Unusable(
                f"{root} holds predictions of {len(models)} models {models}: pick one with --model"
            )
        model = models[0]
    elif model not in models:
        raise Unusable(f"{root} holds no predictions of model {model!r}; it has {models}")
    tasks: set[str] = set()
    version_classes: dict[str, list[str]] = {}
    for (name, version), path in first.items():
        if name != model:
            continue
        metadata = pq.read_schema(path).metadata or {}
        task = metadata.get(layout.META_TASK, b"").decode()
        if task not in ("classification", "regression"):
            raise Unusable(f"{path}: no task in its metadata ({layout.META_TASK.decode()})")
        tasks.add(task)
        if task == "classification":
            version_classes[version] = [str(c) for c in orjson.loads(metadata[layout.META_CLASSES])]
    if len(tasks) > 1:
        raise Unusable(f"the versions of {model!r} disagree on the task: {sorted(tasks)}")
    task = tasks.pop()
    classes = None
    if task == "classification":
        classes = list(dict.fromkeys(c for cs in version_classes.values() for c in cs))
    return Capture(root, model, task, classes, version_classes)


@dataclass
class LabelFile:
    path: Path
    key: str  # one column, or several as a,b (a composite key)
    label: str
    time: str | None = None
    request_id: str | None = None


def read_label_file(spec: LabelFile, task: str) -> pd.DataFrame:
    """A label file (CSV, Parquet or JSON Lines, through the one table reader) as labels:
    ``key``, ``key_type`` (``layout.key_text``), ``label`` (class text, or float64 for a
    regressor), ``time_us`` (microseconds since the epoch, UTC; null: no time),
    ``request_id``, in file order. Raises ``Unusable`` naming the column or rows at fault."""
    keys = key_columns(spec.key.split(","))
    wanted = [*keys, spec.label, *(c for c in (spec.time, spec.request_id) if c)]
    frames = []
    for batch in iter_batches(spec.path, 100_000, keys):
        absent = [c for c in wanted if c not in batch.columns]
        if absent:
            raise Unusable(
                f"{spec.path}: no column {absent[0]!r}; "
                f"it has {[str(c) for c in batch.columns][:20]}"
            )
        frames.append(batch[wanted])
    if not frames:
        return empty_labels(task)
    table = pd.concat(frames, ignore_index=True)
    texts = _key_texts(table, keys, spec.path)
    labels = pd.DataFrame(
        {
            "key": [text for text, _ in texts],
            "key_type": [kind for _, kind in texts],
            "label": _label_values(table[spec.label], task, spec),
            "time_us": _times(table[spec.time], spec) if spec.time else None,
            "request_id": (
                [None if is_missing(v) else str(v) for v in table[spec.request_id]]
                if spec.request_id
                else None
            ),
        }
    )
    labels["time_us"] = labels["time_us"].astype("Int64")
    labels["request_id"] = labels["request_id"].astype(object)
    return labels


def empty_labels(task: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": pd.Series([], dtype=object),
            "key_type": pd.Series([], dtype=object),
            "label": pd.Series([], dtype=object if task == "classification" else "float64"),
            "time_us": pd.Series([], dtype="Int64"),
            "request_id": pd.Series([], dtype=object),
        }
    )


def _key_texts(table: pd.DataFrame, names: Sequence[str], path: Path) -> list[tuple[str, str]]:
    """Each row's key (one column, or a key of several parts) as ``layout.key_text``; the
    first row with an unusable key part is refused, naming its column."""
    columns = [[key_from_cell(cell) for cell in table[name].tolist()] for name in names]
    found = [
        (row, name, problem)
        for name, column in zip(names, columns, strict=True)
        for row, problem in find_key_problems(column).unusable[:1]
    ]
    if found:
        row, name, problem = min(found, key=lambda one: one[0])
        raise Unusable(f"{path}: row {row}, key column {name!r}: {problem}")
    keys = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
    return [layout.key_text(key) for key in keys]


def _label_values(column: pd.Series, task: str, spec: LabelFile) -> list[Any]:
    values = column.tolist()
    gaps = [row for row, value in enumerate(values) if is_missing(value)]
    if gaps:
        raise Unusable(
            f"{spec.path}: {len(gaps)} row(s) without a label in {spec.label!r}, "
            f"first at rows {gaps[:10]}"
        )
    if task == "classification":
        return [layout.class_text(value) for value in values]
    wrong = [
        row
        for row, value in enumerate(values)
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number)
    ]
    if wrong:
        # A text column of numbers was made text by a few cells (a CSV's "nan" or "n/a":
        # only an empty cell is missing): name those, not the first number in it.
        unreadable = [row for row in wrong if not _number_text(values[row])] or wrong
        raise Unusable(
            f"{spec.path}: the model is a regressor, but {len(unreadable)} label(s) in "
            f"{spec.label!r} are not numbers, first at row {unreadable[0]}: "
            f"{values[unreadable[0]]!r}"
        )
    numbers = [float(value) for value in values]
    infinite = [row for row, number in enumerate(numbers) if not math.isfinite(number)]
    if infinite:
        raise Unusable(
            f"{spec.path}: {len(infinite)} label(s) in {spec.label!r} are not finite numbers, "
            f"first at row {infinite[0]}: {values[infinite[0]]!r}"
        )
    return numbers


def _number_text(value: Any) -> bool:
    """Whether a text cell reads as a finite number (as the rest of its column does)."""
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _times(column: pd.Series, spec: LabelFile) -> list[int | None]:
    """Label times as microseconds since the epoch (UTC; a time without a zone is UTC):
    timestamps, or ISO 8601 text as POST /labels takes it. Anything else is refused, naming
    the first cell: 06/12/2026 would be read month first, and a number as nanoseconds."""
    expected = "an ISO 8601 date-time (2026-12-06T10:00:00Z) or a timestamp"
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_datetime64_any_dtype(column):
        bad = next((row for row, cell in enumerate(column) if not is_missing(cell)), None)
        if bad is not None:
            raise Unusable(
                f"{spec.path}: the time column {spec.time!r} holds numbers ({column.iat[bad]!r} "
                f"at row {bad}); {expected}"
            )
    try:
        times = pd.to_datetime(column, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        bad = next(row for row in range(len(column)) if not _iso_time(column.iat[row]))
        shown = repr(column.iat[bad])[:60]
        raise Unusable(
            f"{spec.path}: the time column {spec.time!r} holds {shown} at row {bad}; {expected}"
        ) from None
    return [None if pd.isna(t) else to_microseconds(t.to_pydatetime()) for t in times]


def _iso_time(cell: Any) -> bool:
    if is_missing(cell):
        return True
    try:
        pd.to_datetime(pd.Series([cell], dtype=object), utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def to_microseconds(moment: datetime.datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * MICROSECONDS + delta.microseconds


def from_microseconds(value: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=int(value)
    )


def iso(value: int | None) -> str | None:
    """Microseconds since the epoch as ISO 8601 UTC text (``...Z``)."""
    if value is None:
        return None
    return from_microseconds(value).isoformat().replace("+00:00", "Z")
