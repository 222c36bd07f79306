"""The two engines keyed-evaluate runs its SQL on: DuckDB (embedded, the default) and Spark
(local here, a cluster's in production). The join's SQL is written once
(:mod:`.join`); an engine gives it the sources as views of one shape, a few spellings
where the two dialects differ, a way to keep an intermediate result, and the answers of
queries as pandas frames.

The sources each engine provides (times as microseconds since the epoch, so that every
comparison and window is integer arithmetic, exact and free of session time zones):

- ``prediction_source``: ``request_id, key, key_type, ts_us, version, prediction, error,
  p0 .. pN`` (``p<i>`` the probability of the ``i``-th class of the model's classes, null
  where a version lacks it), the rows of one model.
- ``captured_labels``: ``key, key_type, label, time_us, received_us, request_id, source (0),
  file_name, file_row``: ``labels/`` of labels posted to that model (its name, or
  name:version) or to none; ``file_name, file_row`` the file order (DuckDB: the file's name
  and the row's number in it; Spark: the file's name and ``monotonically_increasing_id()``,
  increasing within a file read in one piece).
- ``drop_source``: ``ts_us, dropped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from keyed_serving.capture import layout
from keyed_serving.evaluation.read import Capture
from keyed_serving.spark_local import local_session

ENGINES = ("duckdb", "spark")

LABEL_COLUMNS = (
    "key, key_type, label, time_us, received_us, request_id, source, file_name, file_row"
)


def _empty_labels_sql(label_type: str) -> str:
    return (
        "SELECT CAST(NULL AS STRING) AS key, CAST(NULL AS STRING) AS key_type, "
        f"CAST(NULL AS {label_type}) AS label, CAST(NULL AS BIGINT) AS time_us, "
        "CAST(NULL AS BIGINT) AS received_us, CAST(NULL AS STRING) AS request_id, "
        "CAST(0 AS BIGINT) AS source, "
        "CAST(NULL AS STRING) AS file_name, CAST(NULL AS BIGINT) AS file_row WHERE 1 = 0"
    )


class Engine:
    """What :mod:`.join` needs of an engine."""

    name: str

    def micros(self, expression: str) -> str:
        """A timestamp expression as microseconds since the epoch (BIGINT)."""
        raise NotImplementedError

    def quantile(self, expression: str, q: float) -> str:
        """The exact quantile, linearly interpolated (NumPy's default)."""
        raise NotImplementedError

    def identifier(self, name: str) -> str:
        raise NotImplementedError

    def literal(self, text: str) -> str:
        raise NotImplementedError

    def keep(self, name: str, query: str) -> None:
        """Computes ``query`` once and keeps it as the table ``name``."""
        raise NotImplementedError

    def view(self, name: str, query: str) -> None:
        raise NotImplementedError

    def frame(self, query: str) -> pd.DataFrame:
        raise NotImplementedError

    def register(self, name: str, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # The sources, one shape for both engines.

    def read_sources(self, capture: Capture, label_type: str) -> None:
        classes = capture.classes or []
        probabilities = [
            f"{self.identifier(layout.PROBABILITY_PREFIX + c)} AS p{i}"
            for i, c in enumerate(classes)
        ]
        selected = ", ".join(
            [
                "request_id",
                "key",
                "key_type",
                f"{self.micros('ts')} AS ts_us",
                "version",
                "prediction",
                "error",
                *probabilities,
            ]
        )
        self.view(
            "prediction_source",
            f"SELECT {selected} FROM {self.dataset(capture, layout.PREDICTIONS)} "
            f"WHERE model = {self.literal(capture.model)}",
        )
        if capture.has_labels:
            labels = self.dataset(capture, layout.LABELS, order=True)
            label = "label" if label_type == "STRING" else f"CAST(label AS {label_type})"
            self.view(
                "captured_labels",
                f"SELECT key, key_type, {label} AS label, {self.micros('time')} AS time_us, "
                f"{self.micros('received')} AS received_us, request_id, "
                "CAST(0 AS BIGINT) AS source, file_name, file_row "
                f"FROM {labels} WHERE model IS NULL OR model = {self.literal(capture.model)} "
                # POST /labels keeps the tag it was posted to (name:version); a label is
                # about the key, whichever version will be scored with it
                f"OR substr(model, 1, {len(capture.model) + 1}) = "
                f"{self.literal(capture.model + ':')}",
            )
        else:
            self.view("captured_labels", _empty_labels_sql(label_type))
        if capture.has_drops:
            self.view(
                "drop_source",
                f"SELECT {self.micros('ts')} AS ts_us, dropped "
                f"FROM {self.dataset(capture, layout.DROPS)}",
            )
        else:
            self.view(
                "drop_source",
                "SELECT CAST(NULL AS BIGINT) AS ts_us, CAST(NULL AS BIGINT) AS dropped WHERE 1 = 0",
            )

    def dataset(self, capture: Capture, name: str, order: bool = False) -> str:
        """A FROM item reading one of the capture's datasets, partition values as text;
        ``order`` adds ``file`` and ``row``, the file order."""
        raise NotImplementedError


class DuckDBEngine(Engine):
    name = "duckdb"

    def __init__(self) -> None:
        import duckdb

        self.connection = duckdb.connect()
        self.connection.execute("SET TimeZone = 'UTC'")

    def micros(self, expression: str) -> str:
        return f"epoch_us({expression})"

    def quantile(self, expression: str, q: float) -> str:
        return f"quantile_cont({expression}, {q!r})"

    def identifier(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def literal(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def keep(self, name: str, query: str) -> None:
        self.connection.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {query}")

    def view(self, name: str, query: str) -> None:
        self.connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {query}")

    def frame(self, query: str) -> pd.DataFrame:
        return self.connection.execute(query).df()

    def register(self, name: str, frame: pd.DataFrame) -> None:
        self.connection.register(f"{name}_frame", frame)
        self.keep(name, f"SELECT * FROM {name}_frame")
        self.connection.unregister(f"{name}_frame")

    def dataset(self, capture: Capture, name: str, order: bool = False) -> str:
        partitions = (
            layout.PREDICTION_PARTITIONS if name == layout.PREDICTIONS else layout.LABEL_PARTITIONS
        )
        types = ", ".join(f"'{p}': VARCHAR" for p in partitions)
        path = self.literal(layout.glob_of(capture.root, name))
        extra = ", filename = true, file_row_number = true" if order else ""
        scan = (
            f"read_parquet({path}, hive_partitioning = true, hive_types = {{{types}}}, "
            f"union_by_name = true{extra})"
        )
        if order:
            return f"(SELECT *, filename AS file_name, file_row_number AS file_row FROM {scan})"
        return scan

    def close(self) -> None:
        self.connection.close()


class SparkEngine(Engine):
    """Spark SQL on a session: the given one, or a local one of this process. Partition
    values stay text (partition type inference off); times are read in UTC."""

    name = "spark"

    def __init__(self, session: Any = None, cores: int = 2) -> None:
        self.owned = session is None
        if session is None:
            session = local_session(cores, "keyed-evaluate", quiet=True)
        self.session = session
        session.conf.set("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        session.conf.set("spark.sql.session.timeZone", "UTC")
        self._kept: list[str] = []

    def micros(self, expression: str) -> str:
        return f"unix_micros({expression})"

    def quantile(self, expression: str, q: float) -> str:
        return f"percentile({expression}, {q!r})"

    def identifier(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def literal(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def keep(self, name: str, query: str) -> None:
        self._forget(name)  # a shared session may hold one of an earlier run
        self.session.sql(f"CACHE TABLE {name} AS {query}")
        self._kept.append(name)

    def _forget(self, name: str) -> None:
        self.session.sql(f"UNCACHE TABLE IF EXISTS {name}")
        self.session.sql(f"DROP VIEW IF EXISTS {name}")

    def view(self, name: str, query: str) -> None:
        self.session.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS {query}")

    def frame(self, query: str) -> pd.DataFrame:
        return self.session.sql(query).toPandas()

    def register(self, name: str, frame: pd.DataFrame) -> None:
        # Through Arrow, typed here: a column of gaps only (no request ids) has no type of
        # its own, and Python rows would cost a second per 100,000 labels.
        kinds = {"int64": pa.int64(), "Int64": pa.int64(), "float64": pa.float64()}
        schema = pa.schema(
            [pa.field(str(c), kinds.get(str(frame[c].dtype), pa.string())) for c in frame.columns]
        )
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        self.session.createDataFrame(table).createOrReplaceTempView(f"{name}_frame")
        self.keep(name, f"SELECT * FROM {name}_frame")

    def dataset(self, capture: Capture, name: str, order: bool = False) -> str:
        base = capture.root / name
        reader = self.session.read.option("basePath", str(base)).option("mergeSchema", "true")
        frame = reader.parquet(str(base))
        if order:
            from pyspark.sql import functions

            frame = frame.withColumn("file_name", functions.input_file_name()).withColumn(
                "file_row", functions.monotonically_increasing_id()
            )
        view = f"{name}_dataset"
        frame.createOrReplaceTempView(view)
        return view

    def close(self) -> None:
        for name in reversed(self._kept):  # a kept table before those it was made from
            self._forget(name)
        if self.owned:
            self.session.stop()


def engine_named(name: str, session: Any = None) -> Engine:
    if name == "duckdb":
        return DuckDBEngine()
    if name == "spark":
        return SparkEngine(session)
    raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")


def sql_list(items: Sequence[str]) -> str:
    return ", ".join(items)
