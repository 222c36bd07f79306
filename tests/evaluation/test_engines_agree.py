"""DuckDB and Spark give the same report on the same capture (all but "engine" and
"generated"): the same SQL on both, numbers equal up to the order floats are summed in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from captures import ensure_metrics
from random_capture import random_capture
from test_report_matches_pandas import evaluated

from keyed_serving.evaluation.engines import DuckDBEngine, SparkEngine
from keyed_serving.evaluation.read import LabelFile, read_label_file
from keyed_serving.spark_local import local_session

pytest.importorskip("pyspark")
pytestmark = pytest.mark.slow  # a Spark session takes 5-10 s to start
ensure_metrics()


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = local_session(2, "keyed-evaluate", quiet=True)
    yield session
    session.stop()


def same(got: Any, want: Any, where: str = "report") -> None:
    """Equal, floats to 1e-9 relative (sums in another order)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for name in want:
            same(got[name], want[name], f"{where}.{name}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{where}[{index}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


@pytest.mark.parametrize(("task", "policy"), [("classification", "last"), ("regression", "all")])
def test_duckdb_and_spark_give_the_same_report(
    tmp_path: Path, spark: Any, task: str, policy: str
) -> None:
    random_capture(tmp_path, 5, task)

    on_duckdb = evaluated(tmp_path, DuckDBEngine(), policy)
    on_spark = evaluated(tmp_path, SparkEngine(spark), policy)

    assert (on_duckdb.pop("engine"), on_spark.pop("engine")) == ("duckdb", "spark")
    on_duckdb.pop("generated")
    on_spark.pop("generated")
    assert on_duckdb["diagnostics"]["labelled_failed"] > 0
    same(on_spark, on_duckdb)


def test_spark_reads_versions_as_text_and_a_label_file_as_duckdb_does(
    tmp_path: Path, spark: Any
) -> None:
    from captures import label, prediction, write_labels, write_predictions

    write_predictions(tmp_path, [prediction("a", 0, "yes")], version="007")
    write_predictions(
        tmp_path,
        [prediction("a", 5, "no"), prediction("b", 5, "no", request_id="q")],
        version="1.10",
    )
    write_labels(tmp_path, [label("a", "no", 6)])
    file = tmp_path / "truth.csv"
    # b: by request id, then a later "yes" without one; c: an orphan; a: a conflict
    file.write_text(
        "id,truth,when,request\n"
        "b,no,,q\n"
        "b,yes,2026-03-02T20:00:00Z,\n"
        "c,no,,\n"
        "a,yes,2026-03-02T18:00:00,\n"
    )
    labels = read_label_file(LabelFile(file, "id", "truth", "when", "request"), "classification")

    on_spark = evaluated(tmp_path, SparkEngine(spark), "last", labels=labels)
    on_duckdb = evaluated(tmp_path, DuckDBEngine(), "last", labels=labels)

    assert list(on_spark["versions"]) == ["007", "1.10"]
    assert on_spark["versions"]["1.10"]["labelled"] == 3
    assert on_spark["diagnostics"]["orphan_labels"] == 1
    assert on_spark["diagnostics"]["conflicting_labels"] == 1
    for report in (on_spark, on_duckdb):
        report.pop("engine")
        report.pop("generated")
    same(on_spark, on_duckdb)
