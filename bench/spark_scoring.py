"""Keyed Spark scoring in local mode: rows/s with 1 and 2 executor cores, and the model's own
in-process rate on the same rows in the same run as the baseline.

    .venv/bin/python bench/spark_scoring.py [--rows 200000] [--repeats 3]

Each Spark run scores a cached, shuffled DataFrame and writes to Spark's `noop` sink (all
rows computed, nothing collected to the driver). The first pass of each session is a
warm-up (Python workers start, each loads the model); the table gives the best of the
timed passes after it. Saves bench/spark_scoring.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="keyed-bench-spark-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402
import pandas as pd  # noqa: E402

from keyed_serving.model.predicting import LoadedModel  # noqa: E402
from keyed_serving.model.store import MODEL_FILE  # noqa: E402
from keyed_serving.model.training import train_default  # noqa: E402
from keyed_serving.offline.spark import demo_table, local_session, score_frame, score_spark  # noqa: E402

BATCH_ROWS = 10_000  # Spark's default Arrow batch (spark.sql.execution.arrow.maxRecordsPerBatch)


def in_process_rate(model: LoadedModel, table: pd.DataFrame, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(table), BATCH_ROWS):
            score_frame(model, table.iloc[start : start + BATCH_ROWS], "row_id", ["batch"])
        best = min(best, time.perf_counter() - started)
    return len(table) / best


def spark_rate(cores: int, tag: str, table: pd.DataFrame, partitions: int, repeats: int) -> float:
    spark = local_session(cores, app_name=f"bench-spark-{cores}")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.createDataFrame(table).repartition(partitions).cache()
        df.count()
        best = float("inf")
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            scored = score_spark(df, key="row_id", model_tag=tag, keep=["batch"])
            scored.write.format("noop").mode("overwrite").save()
            elapsed = time.perf_counter() - started
            if attempt > 0:  # the first pass starts the Python workers and loads the model
                best = min(best, elapsed)
        return len(table) / best
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "spark_scoring.md"))
    args = parser.parse_args()

    tag = train_default().tag
    stored = bentoml.models.get(tag)
    model = LoadedModel.load(str(stored.tag), stored.info.metadata, stored.path_of(MODEL_FILE))
    table = demo_table(model.spec, args.rows)

    rows = [("in-process, one Python process (score_frame)", in_process_rate(model, table, 3))]
    for cores in (1, 2):
        rate = spark_rate(cores, tag, table, args.partitions, args.repeats)
        rows.append((f"Spark local[{cores}], {args.partitions} partitions", rate))
    for name, rate in rows:
        print(f"{name:50s} {rate:>10,.0f} rows/s")

    load = os.getloadavg()
    lines = [
        "# Keyed Spark scoring, local mode",
        "",
        f"`bench/spark_scoring.py --rows {args.rows} --repeats {args.repeats}`: the default "
        f"iris model (100 trees), {args.rows:,} rows with shuffled keys and one kept column; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Best of "
        f"{args.repeats} timed passes after a warm-up; Spark writes to its `noop` sink.",
        "",
        "| path | rows/s |",
        "|---|---|",
        *[f"| {name} | {rate:,.0f} |" for name, rate in rows],
        "",
        f"Load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(other work on the same cores lowers every number).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
