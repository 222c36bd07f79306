"""A Spark session in local mode whose Python workers run this interpreter: the one start
of Spark for keyed scoring (:mod:`keyed_serving.offline.spark`) and for keyed-evaluate's
Spark engine (:mod:`keyed_serving.evaluation.engines`). pyspark is imported when called."""

from __future__ import annotations

import os
import sys
from typing import Any


def local_session(cores: int = 2, app_name: str = "keyed-scoring", *, quiet: bool = False) -> Any:
    """A Spark session in local mode with ``cores`` executor cores, whose Python workers run
    this interpreter (Spark would otherwise start whatever ``python3`` is on the PATH, which
    lacks the project's packages). ``quiet``: no progress bar, errors only in the log (a
    command's own output stays readable)."""
    from pyspark.sql import SparkSession

    # Read by PySpark when it starts the context; the spark.pyspark.python setting is only
    # honoured by spark-submit.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(max(2, 4 * cores)))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if quiet:
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    session = builder.getOrCreate()
    if quiet:
        session.sparkContext.setLogLevel("ERROR")
    return session
