"""Where captured predictions and labels lie, and what their columns are: the one contract
between the writers (the server's capture, ``POST /labels``, ``score_spark(capture_dir=)``)
and the readers (``keyed-evaluate`` on DuckDB or Spark, or anyone's pyarrow or DuckDB).

    <capture dir>/predictions/model=<name>/version=<version>/date=<YYYY-MM-DD>/<file>.parquet
    <capture dir>/labels/date=<YYYY-MM-DD>/<file>.parquet
    <capture dir>/drops/date=<YYYY-MM-DD>/<file>.parquet

A file is written under a hidden temporary name (``.<file>.parquet.tmp``) and renamed,
so a reader listing ``**/*.parquet`` never sees half a file. ``model``, ``version`` and
``date`` are partition values only (Hive style), never columns inside a file; readers
take them as text (``PARTITION_TYPES``), not as numbers or dates a version may look like.

A prediction is identified by ``(request_id, key, key_type)``: keys are unique within a
request. Keys are kept as text with their type (``key_text``), so that ``1`` and ``"1"``
stay different keys, as everywhere else (:mod:`keyed_serving.keys`). A classifier's
predictions and labels are kept as the text of the class (``class_text``), so an integer
class ``1`` and a posted label ``1`` or ``"1"`` meet; a regressor's as float64.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

PREDICTIONS = "predictions"
LABELS = "labels"
DROPS = "drops"
SUFFIX = ".parquet"
TEMPORARY_SUFFIX = ".parquet.tmp"

# Hive partition columns of each dataset, all read as text.
PREDICTION_PARTITIONS = ("model", "version", "date")
LABEL_PARTITIONS = ("date",)
PARTITION_TYPES = "string"

# The columns of a predictions file, before the per-class and per-feature ones.
REQUEST_ID = "request_id"  # string, not null: X-Request-ID (the client's, or the server's)
KEY = "key"  # string, not null: key_text(key)
KEY_TYPE = "key_type"  # string, not null: one of KEY_TYPES
TS = "ts"  # timestamp[us, tz=UTC], not null: when the prediction was answered
PREDICTION = "prediction"  # string (classifier, class_text) or double (regressor); null on error
ERROR = "error"  # string: the error code (keyed_serving.schemas), null where predicted
ERROR_MESSAGE = "error_message"  # string: its message, null where predicted
SOURCE = "source"  # string: "predict", "predict_file", "v2_http", "v2_grpc", "spark"
PROBABILITY_PREFIX = "probability_"  # + class_text(class): double, classifiers only
FEATURE_PREFIX = "feature_"  # + feature name: the value the model got, in its feature type
PREDICTION_COLUMNS = (REQUEST_ID, KEY, KEY_TYPE, TS, PREDICTION, ERROR, ERROR_MESSAGE, SOURCE)

# The columns of a labels file.
LABEL = "label"  # string (class_text) for a classifier's labels, else the number as text
LABEL_TIME = "time"  # timestamp[us, tz=UTC], null: "no time given" (joins the latest)
RECEIVED = "received"  # timestamp[us, tz=UTC], not null: when the server took it
LABEL_MODEL = "model"  # string: the model it was posted to (null for a label file)
LABEL_COLUMNS = (KEY, KEY_TYPE, LABEL, LABEL_TIME, REQUEST_ID, RECEIVED, LABEL_MODEL)

# The columns of a drops file: capture rows that were not kept, and why.
DROPPED = "dropped"  # int64
DROP_REASON = "reason"  # string: "buffer_full", "max_bytes", "write_failed"
WRITER = "writer"  # string: the writer that counted them (host-pid-start)
DROP_COLUMNS = (TS, WRITER, DROPPED, DROP_REASON)

# Parquet key-value metadata of every predictions file: what the model is, for a reader that
# has no model store (keyed-evaluate).
META_TASK = b"keyed.task"  # "classification" or "regression"
META_CLASSES = b"keyed.classes"  # JSON list of class_text, in the model's order
META_FEATURES = b"keyed.features"  # JSON list of feature names, in the model's order

KEY_TYPES = ("int", "str", "composite")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def key_text(key: Any) -> tuple[str, str]:
    """A key (or a composite key, a tuple of keys) -> (its text, its type): an int key as
    its decimal digits, a string key as itself, a composite key as the JSON array of its
    parts."""
    if type(key) is int:
        return str(key), "int"
    if type(key) is str:
        return key, "str"
    if isinstance(key, tuple):
        return orjson.dumps(list(key)).decode(), "composite"
    raise TypeError(f"not a key: {type(key).__name__}")


def class_text(value: Any) -> str:
    """A class (as the model holds it) or a classifier's label (as a client sent it) -> the
    text both are kept as: integral numbers without a fraction (``1``, ``1.0``, numpy ints
    alike -> ``"1"``), booleans as ``"true"``/``"false"``, strings as they are."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if isinstance(value, int) or (hasattr(value, "is_integer") and _integral(value)):
        return str(int(value))
    if hasattr(value, "item"):  # a numpy scalar
        return class_text(value.item())
    return repr(float(value)) if isinstance(value, float) else str(value)


def _integral(value: Any) -> bool:
    try:
        return math.isfinite(value) and float(value).is_integer()
    except (TypeError, ValueError):
        return False


def class_texts(classes: Sequence[Any]) -> list[str]:
    return [class_text(value) for value in classes]


def partition_value(value: str) -> str:
    """A model name or version as a directory name: anything but [A-Za-z0-9._-] as %XX
    (BentoML's names and versions need none)."""
    return _UNSAFE.sub(lambda match: "".join(f"%{b:02X}" for b in match[0].encode()), value)


def date_of(ts: datetime.datetime | float) -> str:
    """The UTC date of a time (a datetime, or seconds since the epoch): its partition."""
    if not isinstance(ts, datetime.datetime):
        ts = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return ts.astimezone(datetime.UTC).strftime("%Y-%m-%d")


def predictions_dir(root: Path, model: str, version: str, date: str) -> Path:
    return (
        root
        / PREDICTIONS
        / f"model={partition_value(model)}"
        / f"version={partition_value(version)}"
        / f"date={date}"
    )


def labels_dir(root: Path, date: str) -> Path:
    return root / LABELS / f"date={date}"


def drops_dir(root: Path, date: str) -> Path:
    return root / DROPS / f"date={date}"


def glob_of(root: Path, dataset: str) -> str:
    """Every finished file of a dataset, as DuckDB and Spark take a path pattern."""
    return str(root / dataset / "**" / f"*{SUFFIX}")


def utc_time(text: Any) -> datetime.datetime | None:
    """An ISO 8601 date-time text as UTC (no offset: UTC), or None: the one reading of a
    time that POST /labels and keyed-evaluate's options take."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    try:
        return value.astimezone(datetime.UTC)
    except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it: no UTC date
        return None
