"""Keyed offline scoring on Spark: a DataFrame in, the same model's predictions out, each row
keeping its key and the columns asked for.

    from keyed_serving.offline.spark import score_spark
    scored = score_spark(df, key="customer_id", model_tag="churn:latest", keep=["region"])
    scored = score_spark(df, key=["region", "customer_id"], model_tag="churn:latest")

BentoML's ``bentoml.batch.run_in_spark`` only drives the legacy service API, so this is
ours. Rows are scored where they are (``mapInPandas``), never moved or reordered across
machines, and each output row is built from its own input row: the key cannot be parted
from its prediction by any partitioning or shuffle. The output columns are the client's
(``keyed_serving.tables.scored_table``): the key column(s), ``prediction``, one
``probability_<class>`` column per class, ``error`` (null when the row was predicted), then
the kept columns.

The model is the one the service serves, loaded through the same model stage
(``LoadedModel``), once per Spark Python worker process (Spark reuses its
Python workers across tasks, so that is once per executor core, not once per batch).
Executors find it either in a BentoML model store they can read (the default; in local
mode the driver's own) or, with ``ship_model=True``, in an archive exported on the driver
and shipped with the job (``SparkContext.addFile``) for clusters that share no store.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from keyed_serving.capture.files import (
    Captured,
    CapturedModel,
    captured_table,
    write_predictions,
)
from keyed_serving.keys import MAX_KEY_LENGTH, RULE, find_key_problems, key_from_cell
from keyed_serving.model.predicting import LoadedModel, model_error
from keyed_serving.model.spec import ModelSpec
from keyed_serving.model.store import load_stored, spec_of
from keyed_serving.spark_local import local_session
from keyed_serving.tables import ROW_KEY, check_table_columns, feature_column, key_columns

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import DataType, StructField, StructType

ERROR_COLUMN = "error"
# With capture_dir: a partition's captured rows are written at least this often.
CAPTURE_ROWS = 200_000
_SHIPPED_PREFIX = "keyed-serving-model-"
# One loaded model per tag in each Python worker process: the pipeline is unpickled once,
# not once per task or batch.
_loaded: dict[str, LoadedModel] = {}
_loading = threading.Lock()


def score_spark(
    df: DataFrame,
    key: str | Sequence[str],
    model_tag: str | None = None,
    keep: Sequence[str] = (),
    *,
    ship_model: bool = False,
    capture_dir: str | os.PathLike[str] | None = None,
) -> DataFrame:
    """Score every row of ``df`` with the model ``model_tag`` (``name:version`` or
    ``name:latest``; default ``MODEL_TAG`` or ``iris_classifier:latest``, as the service).

    The result has one row per input row: the ``key`` column(s) as they came (``key`` is a
    column or a list of them, a key of several parts), ``prediction``, one
    ``probability_<class>`` column per class for classifiers, ``error`` (null, or
    ``model_error: ...`` for a row the model raised on; the other rows of its batch are
    still predicted) and the ``keep`` columns. Keys should be unique, as for the client:
    the function pairs each prediction with its own row's key whatever they are, but only
    unique keys let a reader join the output back. ``latest`` is resolved on the driver,
    so every executor scores with the same version.

    Keys follow ``keyed_serving.keys``: a row whose key (or a part of it) is null, an empty
    string or longer than the limit is refused, on the driver and before any scoring, by
    one pass over the key columns. A Spark DataFrame has no row order, so ``"@row"`` is
    refused: add a key column first.

    ``capture_dir``: every scored row is also written there in the server's capture layout
    (``keyed_serving.capture.layout``, source ``spark``), so ``keyed-evaluate`` evaluates
    batch scoring as it does served traffic. It must be a directory every executor can
    write (in local mode, any). Each call is one request id (``spark-<hex>``); a partition
    writes its rows when it has been scored (and every ``CAPTURE_ROWS``), so an action that
    computes the result twice, or a retried task, writes rows twice under the same request
    id and key, which the evaluation counts once.
    """
    import bentoml

    tag = model_tag or os.environ.get("MODEL_TAG", "iris_classifier:latest")
    stored = bentoml.models.get(tag)
    spec = spec_of(stored)
    if key == ROW_KEY:
        raise ValueError(
            f"a Spark DataFrame has no row order to key by ({ROW_KEY}): add a key column, "
            "e.g. with pyspark.sql.functions.monotonically_increasing_id()"
        )
    from pyspark.sql import functions

    names = key_columns(key)
    _check_columns(df, names, keep, spec)
    check_spark_keys(df, names)
    keep = list(keep)
    # Spark hands integer columns with nulls to pandas as floats: such kept columns travel
    # as their exact text and are cast back to their own type in the output.
    as_text = [c for c in keep if _integral(df.schema[c].dataType)]
    kept_fields = [_string_field(df.schema[c]) if c in as_text else df.schema[c] for c in keep]
    schema = output_schema(spec, [df.schema[n] for n in names], kept_fields)
    shipped: str | None = None
    if ship_model:
        shipped = _ship(df, spec.tag)
    carried = {f.name: f"{_FEATURE_PREFIX}{i}" for i, f in enumerate(spec.features)}
    capture = None if capture_dir is None else str(capture_dir)
    request_id = f"spark-{uuid.uuid4().hex[:16]}"

    def score_batches(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        model = _model_on_executor(spec.tag, shipped)
        held: list[Captured] | None = None if capture is None else []
        try:
            for batch in batches:
                yield score_frame(model, batch, names, keep, carried, held, request_id)
                if held and sum(part.rows for part in held) >= CAPTURE_ROWS:
                    _write_captured(Path(capture or ""), model.spec, held)
        finally:
            if held:
                _write_captured(Path(capture or ""), model.spec, held)

    selected = [
        *(functions.col(n) for n in names),
        *(_feature_as_read(df, f).alias(carried[f.name]) for f in spec.features),
        *(
            functions.col(c).cast("string").alias(c) if c in as_text else functions.col(c)
            for c in keep
        ),
    ]
    scored = df.select(*selected).mapInPandas(score_batches, schema)
    for column in as_text:
        scored = scored.withColumn(column, functions.col(column).cast(df.schema[column].dataType))
    return scored


# The feature columns travel to the Python workers under names of their own: a feature may
# also be a key or a kept column, which travel as they are.
_FEATURE_PREFIX = "__keyed_feature_"


def _feature_as_read(df: DataFrame, feature: Any) -> Any:
    """A feature column as the model takes it, read by the client's rule: a category
    feature's values as their exact text. Spark would hand an integer column with nulls to
    pandas as floats (10001 -> "10001.0"), and a decimal column as decimals; both travel as
    Spark's text of them ("10001", "123.45"), a boolean as "True"/"False" (the categories
    training names them by). Numbers, strings and date-times go as they are."""
    from pyspark.sql import functions
    from pyspark.sql.types import BooleanType, DecimalType

    column = functions.col(feature.name)
    if feature.type != "category":
        return column
    kind = df.schema[feature.name].dataType
    if _integral(kind) or isinstance(kind, DecimalType):
        return column.cast("string")
    if isinstance(kind, BooleanType):
        return functions.when(column, "True").when(~column, "False")
    return column


def _integral(kind: Any) -> bool:
    from pyspark.sql.types import ByteType, IntegerType, LongType, ShortType

    return isinstance(kind, ByteType | ShortType | IntegerType | LongType)


def _string_field(field: StructField) -> StructField:
    from pyspark.sql.types import StringType, StructField

    return StructField(field.name, StringType(), True)


def score_frame(
    model: LoadedModel,
    batch: pd.DataFrame,
    key: str | Sequence[str],
    keep: Sequence[str],
    carried: Mapping[str, str] | None = None,
    captured: list[Captured] | None = None,
    request_id: str = "",
) -> pd.DataFrame:
    """One pandas batch scored, in its own row order, by the runner's own model stage
    (``LoadedModel.predict_columns``): the whole batch in one call; if the model raises,
    the rows it cannot take get an error each and the others are predicted. Key columns
    are passed through as they came, after a check that each is usable (a null key column
    of longs would have reached pandas as floats). Feature values are read as the client
    reads a table (``keyed_serving.tables.feature_column``); ``carried`` names the column
    that carries each feature, when not the feature's own name. With ``captured``, what the
    batch answered is appended to it, for the capture (``keyed_serving.capture.files``)."""
    spec = model.spec
    names = [key] if isinstance(key, str) else list(key)
    parts = [_usable_keys(batch[name].tolist(), name) for name in names]
    keys = parts[0] if len(names) == 1 else list(zip(*parts, strict=True))
    carried = carried or {}
    columns = {
        f.name: feature_column(batch[carried.get(f.name, f.name)], f.type) for f in spec.features
    }
    predicted = model.predict_columns(columns)
    out: dict[str, Any] = {name: batch[name].to_numpy() for name in names}
    out["prediction"] = pd.Series(predicted.predictions.tolist(), dtype=object)
    if predicted.probabilities is not None:
        for i, label in enumerate(spec.classes or []):
            out[f"probability_{label}"] = predicted.probabilities[:, i]
    errors: list[str | None] = [None] * len(keys)
    said: dict[int, tuple[str, str]] = {}
    for row, reason in predicted.errors.items():
        error = model_error(keys[row], reason)
        errors[row] = f"{error.code}: {error.message}"
        said[row] = (error.code, error.message)
    out[ERROR_COLUMN] = pd.Series(errors, dtype=object)
    if captured is not None:
        captured.append(
            Captured(
                request_id,
                "spark",
                time.time(),
                keys,
                [columns[f.name] for f in spec.features],
                cast(Sequence[Any], predicted.predictions),  # a NumPy array, read as one
                predicted.probabilities,
                said,
            )
        )
    for column in keep:
        out[column] = batch[column].to_numpy()
    return pd.DataFrame(out)


def _write_captured(root: Path, spec: ModelSpec, held: list[Captured]) -> None:
    model = CapturedModel.of(spec)
    write_predictions(root, model, captured_table(model, held))
    held.clear()


def _usable_keys(cells: list[Any], name: str) -> list[Any]:
    """A batch's key column as keys, refused if one is unusable (the driver's check makes
    that a guard only). Strings and integers are checked as they are, in C; only other
    cells (decimals) go through ``key_from_cell``."""
    if not find_key_problems(cells).unusable:
        return cells
    cells = [key_from_cell(cell) for cell in cells]
    unusable = find_key_problems(cells).unusable
    if unusable:
        raise ValueError(f"key column {name!r}: {len(unusable)} unusable, {unusable[0][1]}")
    return cells


def output_schema(
    spec: ModelSpec, keys: Sequence[StructField], kept: Sequence[StructField]
) -> StructType:
    """The client's columns as a Spark schema: keys, prediction, probabilities, error, kept."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    fields = list(keys)
    fields.append(StructField("prediction", _prediction_type(spec), True))
    fields += [
        StructField(f"probability_{label}", DoubleType(), True) for label in spec.classes or []
    ]
    fields.append(StructField(ERROR_COLUMN, StringType(), True))
    fields += list(kept)
    return StructType(fields)


def check_spark_keys(df: DataFrame, names: Sequence[str]) -> None:
    """Refuses key columns that are not usable keys (``keyed_serving.keys``): types that
    are neither strings nor integers, and rows whose key part is null, empty or too long,
    counted in one pass on the driver. Only then does any scoring start."""
    from pyspark.sql import functions
    from pyspark.sql.types import (
        ByteType,
        DecimalType,
        IntegerType,
        LongType,
        ShortType,
        StringType,
    )

    checks = []
    for name in names:
        kind = df.schema[name].dataType
        column = functions.col(name)
        if isinstance(kind, StringType):
            bad = column.isNull() | (functions.length(column) == 0)
            bad = bad | (functions.length(column) > MAX_KEY_LENGTH)
        elif isinstance(kind, ByteType | ShortType | IntegerType | LongType) or (
            isinstance(kind, DecimalType) and kind.scale == 0 and kind.precision <= 18
        ):
            bad = column.isNull()  # every value of these types is in the int64 range
        else:
            raise ValueError(f"key column {name!r} is of type {kind.simpleString()}; {RULE}")
        checks.append(functions.count(functions.when(bad, 1)).alias(name))
    counts = df.agg(*checks).first()
    assert counts is not None
    unusable = {name: counts[name] for name in names if counts[name]}
    if unusable:
        shown = ", ".join(f"{count:,} in {name!r}" for name, count in unusable.items())
        raise ValueError(
            f"rows without a usable key (null, empty, or longer than {MAX_KEY_LENGTH} "
            f"characters): {shown}; {RULE}"
        )


def _check_columns(
    df: DataFrame, names: Sequence[str], keep: Sequence[str], spec: ModelSpec
) -> None:
    columns = df.columns
    check_table_columns(columns, names, spec.feature_names, keep, spec.classes, "the DataFrame")
    carriers = sorted(c for c in columns if c.startswith(_FEATURE_PREFIX))
    if carriers:
        raise ValueError(f"the DataFrame's columns {carriers} have a name this function uses")


def _prediction_type(spec: ModelSpec) -> DataType:
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    types = {"number": DoubleType, "integer": LongType, "boolean": BooleanType}
    return types.get(spec.prediction_type, StringType)()


def _ship(df: DataFrame, tag: str) -> str:
    """Export the model on the driver and add it to the job's files; its file name."""
    import bentoml

    name = _SHIPPED_PREFIX + tag.replace(":", "-") + ".bentomodel"
    path = Path(tempfile.mkdtemp(prefix="keyed-spark-ship-")) / name
    bentoml.models.export_model(tag, str(path))
    df.sparkSession.sparkContext.addFile(str(path))
    return name


def _model_on_executor(tag: str, shipped: str | None) -> LoadedModel:
    with _loading:
        if tag not in _loaded:
            _loaded[tag] = _load_shipped(tag, shipped) if shipped else _load_from_store(tag)
        return _loaded[tag]


def _load_from_store(tag: str) -> LoadedModel:
    import bentoml

    stored = bentoml.models.get(tag)
    return load_stored(stored)


def _load_shipped(tag: str, name: str) -> LoadedModel:
    """Import the shipped archive into a model store of this worker's own: executors of a
    cluster need no BentoML home, nor write to anyone's."""
    import bentoml
    from bentoml._internal.models.model import ModelStore
    from pyspark import SparkFiles

    # Beside the shipped file, in the folder Spark removes when its context stops.
    folder = SparkFiles.getRootDirectory()
    store = ModelStore(tempfile.mkdtemp(prefix="keyed-spark-models-", dir=folder))
    stored = bentoml.models.import_model(SparkFiles.get(name), _model_store=store)
    if str(stored.tag) != tag:
        raise RuntimeError(f"shipped model is {stored.tag}, expected {tag}")
    return load_stored(stored)


def demo_table(spec: ModelSpec, rows: int, seed: int = 0) -> pd.DataFrame:
    """A table the model can score: its features with random values (some missing), keys
    in shuffled order and a passthrough column."""
    rng = np.random.default_rng(seed)
    table: dict[str, Any] = {"row_id": [f"row-{i:09d}" for i in rng.permutation(rows)]}
    for feature in spec.features:
        if feature.type == "number":
            values = np.round(rng.uniform(0.1, 8.0, rows), 2)
            table[feature.name] = np.where(rng.random(rows) < 0.02, np.nan, values)
        else:
            choices = feature.categories or ["a", "b", "c"]
            table[feature.name] = rng.choice(choices, rows).astype(object)
    table["batch"] = rng.choice(["2024-01", "2024-02", "2024-03"], rows)
    return pd.DataFrame(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Score a generated table by key in Spark local mode; check every key came back once."""
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog="python -m keyed_serving.offline.spark", description=main.__doc__
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cores", type=int, default=2, help="executor cores (local[N])")
    parser.add_argument("--model", default=None, help="model tag (default: MODEL_TAG or iris)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the scored table here (Parquet)")
    args = parser.parse_args(argv)

    import bentoml
    from pyspark.sql import functions

    tag = args.model or os.environ.get("MODEL_TAG", "iris_classifier:latest")
    stored = bentoml.models.get(tag)
    spec = spec_of(stored)
    spark = local_session(args.cores, app_name="keyed-scoring-demo")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.createDataFrame(demo_table(spec, args.rows)).repartition(args.partitions)
        df = df.cache()
        df.count()  # generate and shuffle before the clock starts
        started = time.perf_counter()
        scored = score_spark(df, key="row_id", model_tag=spec.tag, keep=["batch"]).cache()
        summary = scored.agg(
            functions.count("*").alias("rows"),
            functions.countDistinct("row_id").alias("keys"),
            functions.count(ERROR_COLUMN).alias("errors"),
        ).first()
        seconds = time.perf_counter() - started
        assert summary is not None
        print(f"model {spec.tag}, local[{args.cores}], {args.partitions} partitions")
        rate = summary["rows"] / seconds
        print(
            f"{summary['rows']:,} rows scored, {summary['keys']:,} distinct keys, "
            f"{summary['errors']:,} errors in {seconds:.1f} s: {rate:,.0f} rows/s (Python "
            "workers' start, model loading and the key count included; bench/spark_scoring.py "
            "measures the steady rate)"
        )
        scored.show(5, truncate=False)
        if args.out:
            scored.write.mode("overwrite").parquet(args.out)
            print(f"written to {args.out}")
        return 0 if summary["rows"] == summary["keys"] == args.rows else 1
    finally:
        spark.stop()


if __name__ == "__main__":
    # Run from the module imported under its own name: functions defined in __main__ are
    # pickled by value for the executors, with this module's lock inside, which cannot be.
    from keyed_serving.offline.spark import main as keyed_main

    raise SystemExit(keyed_main())
