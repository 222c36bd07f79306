"""Keyed offline scoring on Spark: a DataFrame in, the same model's predictions out, each row
keeping its key and the columns asked for.

    from keyed_serving.spark import score_spark
    scored = score_spark(df, key="customer_id", model_tag="churn:latest", keep=["region"])

BentoML's ``bentoml.batch.run_in_spark`` only drives the legacy service API, so this is
ours. Rows are scored where they are (``mapInPandas``), never moved or reordered across
machines, and each output row is built from its own input row: the key cannot be parted
from its prediction by any partitioning or shuffle. The output columns are the client's
(``keyed_serving.tables.scored_table``): the key, ``prediction``, one ``probability_<class>``
column per class, ``error`` (null when the row was predicted), then the kept columns.

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from keyed_serving.model import LoadedModel, ModelSpec, load_stored, model_error, spec_of

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import DataType, StructField, StructType

ERROR_COLUMN = "error"
_SHIPPED_PREFIX = "keyed-serving-model-"
# One loaded model per tag in each Python worker process: the pipeline is unpickled once,
# not once per task or batch.
_loaded: dict[str, LoadedModel] = {}
_loading = threading.Lock()


def score_spark(
    df: DataFrame,
    key: str,
    model_tag: str | None = None,
    keep: Sequence[str] = (),
    *,
    ship_model: bool = False,
) -> DataFrame:
    """Score every row of ``df`` with the model ``model_tag`` (``name:version`` or
    ``name:latest``; default ``MODEL_TAG`` or ``iris_classifier:latest``, as the service).

    The result has one row per input row: ``key`` as it came, ``prediction``, one
    ``probability_<class>`` column per class for classifiers, ``error`` (null, or
    ``model_error: ...`` for a row the model raised on; the other rows of its batch are
    still predicted) and the ``keep`` columns. Keys should be unique, as for the client:
    the function pairs each prediction with its own row's key whatever they are, but only
    unique keys let a reader join the output back. ``latest`` is resolved on the driver,
    so every executor scores with the same version.
    """
    import bentoml

    tag = model_tag or os.environ.get("MODEL_TAG", "iris_classifier:latest")
    stored = bentoml.models.get(tag)
    spec = spec_of(stored)
    _check_columns(df, key, keep, spec)
    schema = output_schema(spec, df.schema[key], [df.schema[c] for c in keep])
    shipped: str | None = None
    if ship_model:
        shipped = _ship(df, spec.tag)
    features = spec.feature_names
    keep = list(keep)

    def score_batches(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        model = _model_on_executor(spec.tag, shipped)
        for batch in batches:
            yield score_frame(model, batch, key, keep)

    return df.select(key, *[c for c in features if c not in (key, *keep)], *keep).mapInPandas(
        score_batches, schema
    )


def score_frame(
    model: LoadedModel, batch: pd.DataFrame, key: str, keep: Sequence[str]
) -> pd.DataFrame:
    """One pandas batch scored, in its own row order, by the runner's own model stage
    (``LoadedModel.predict_columns``): the whole batch in one call; if the model raises,
    the rows it cannot take get an error each and the others are predicted."""
    spec = model.spec
    keys = batch[key].tolist()
    columns = {name: batch[name].tolist() for name in spec.feature_names}
    predicted = model.predict_columns(columns)
    out: dict[str, Any] = {key: batch[key].to_numpy()}
    out["prediction"] = pd.Series(predicted.predictions.tolist(), dtype=object)
    if predicted.probabilities is not None:
        for i, label in enumerate(spec.classes or []):
            out[f"probability_{label}"] = predicted.probabilities[:, i]
    errors: list[str | None] = [None] * len(keys)
    for row, reason in predicted.errors.items():
        error = model_error(keys[row], reason)
        errors[row] = f"{error.code}: {error.message}"
    out[ERROR_COLUMN] = pd.Series(errors, dtype=object)
    for column in keep:
        out[column] = batch[column].to_numpy()
    return pd.DataFrame(out)


def output_schema(spec: ModelSpec, key: StructField, kept: Sequence[StructField]) -> StructType:
    """The client's columns as a Spark schema: key, prediction, probabilities, error, kept."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    fields = [key]
    fields.append(StructField("prediction", _prediction_type(spec), True))
    fields += [
        StructField(f"probability_{label}", DoubleType(), True) for label in spec.classes or []
    ]
    fields.append(StructField(ERROR_COLUMN, StringType(), True))
    fields += list(kept)
    return StructType(fields)


def _check_columns(df: DataFrame, key: str, keep: Sequence[str], spec: ModelSpec) -> None:
    columns = set(df.columns)
    if key not in columns:
        raise ValueError(f"no key column {key!r}; the DataFrame has {sorted(columns)[:20]}")
    missing = [n for n in spec.feature_names if n not in columns]
    if missing:
        raise ValueError(f"the DataFrame lacks the model's features {missing}")
    missing_keep = [c for c in keep if c not in columns]
    if missing_keep:
        raise ValueError(f"columns to keep not in the DataFrame: {missing_keep}")
    produced = {"prediction", ERROR_COLUMN, *(f"probability_{c}" for c in spec.classes or [])}
    clashes = sorted(produced & {key, *keep})
    if clashes:
        raise ValueError(f"the key or kept columns {clashes} clash with the output's own")
    if key in keep:
        raise ValueError(f"the key column {key!r} is in the output already; do not keep it")


def _prediction_type(spec: ModelSpec) -> DataType:
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    if spec.task == "regression":
        return DoubleType()
    classes = list(spec.classes or [])
    if classes and all(isinstance(c, bool) for c in classes):
        return BooleanType()
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return LongType()
    if classes and all(isinstance(c, int | float) for c in classes):
        return DoubleType()
    return StringType()


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


def local_session(cores: int = 2, app_name: str = "keyed-scoring") -> Any:
    """A Spark session in local mode with ``cores`` executor cores, whose Python workers run
    this interpreter (Spark would otherwise start whatever ``python3`` is on the PATH, which
    lacks the project's packages)."""
    import sys

    from pyspark.sql import SparkSession

    # Read by PySpark when it starts the context; the spark.pyspark.python setting is only
    # honoured by spark-submit.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(max(2, 4 * cores)))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )


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

    parser = argparse.ArgumentParser(prog="python -m keyed_serving.spark", description=main.__doc__)
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
    from keyed_serving.spark import main as keyed_main

    raise SystemExit(keyed_main())
