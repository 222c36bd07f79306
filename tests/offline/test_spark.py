"""Keyed offline scoring on Spark (local mode): every key once, the service's predictions."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from exact_values import import_visit_model, import_zip_model, visit_table, zip_table
from starlette.testclient import TestClient
from support import make_customer_table, own_predictions, save_strict_copy

pytest.importorskip("pyspark")

from keyed_serving.offline.spark import local_session, score_spark

pytestmark = pytest.mark.slow
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = local_session(2, app_name="keyed-serving-tests")
    yield session
    session.stop()


def flowers(n: int, seed: int = 3) -> pd.DataFrame:
    """Keys in shuffled order, and two passthrough columns derived from the key (one with
    gaps) so that a row whose columns got mixed up would show."""
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(n)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (n, 4)), 1), columns=FEATURES)
    frame.insert(0, "id", [f"f-{i:07d}" for i in numbers])
    frame["shelf"] = [f"s{i % 13}" for i in numbers]
    frame["weight"] = [None if i % 10 == 0 else i * 0.5 for i in numbers]
    return frame


def test_every_key_comes_back_once_with_the_models_prediction_and_its_own_columns(
    spark: Any, default_model: str
) -> None:
    table = flowers(200_000)
    df = spark.createDataFrame(table).repartition(7)  # a shuffle: rows leave their order

    scored = score_spark(df, key="id", model_tag=default_model, keep=["shelf", "weight"])
    result = scored.toPandas()

    assert list(result.columns) == [
        "id",
        "prediction",
        *[f"probability_{c}" for c in CLASSES],
        "error",
        "shelf",
        "weight",
    ]
    assert len(result) == len(table)
    assert result["id"].is_unique
    assert set(result["id"]) == set(table["id"])
    assert result["error"].isna().all()
    expected = table.set_index("id")
    got = result.set_index("id").loc[expected.index]
    assert got["prediction"].tolist() == own_predictions(default_model, table)
    assert got["shelf"].tolist() == expected["shelf"].tolist()
    assert got["weight"].isna().tolist() == expected["weight"].isna().tolist()
    assert got["weight"].dropna().tolist() == expected["weight"].dropna().tolist()
    sums = got[[f"probability_{c}" for c in CLASSES]].sum(axis=1)
    assert np.allclose(sums, 1.0)


def test_spark_and_the_service_answer_the_same_rows_the_same_way(
    spark: Any, default_model: str, asgi_client: TestClient
) -> None:
    table = flowers(3000, seed=11)
    scored = score_spark(
        spark.createDataFrame(table).repartition(3), key="id", model_tag=default_model
    ).toPandas()
    response = asgi_client.post(
        "/predict",
        json={
            "instances": [
                {"key": row["id"], "features": {f: row[f] for f in FEATURES}}
                for row in table.to_dict("records")
            ]
        },
    )
    assert response.status_code == 200
    service = {p["key"]: p for p in response.json()["predictions"]}
    assert len(service) == len(scored) == len(table)
    for row in scored.to_dict("records"):
        answer = service[row["id"]]
        assert row["prediction"] == answer["prediction"], row["id"]
        for label in CLASSES:
            assert row[f"probability_{label}"] == pytest.approx(
                answer["probabilities"][label], abs=1e-12
            )


def test_a_table_with_categories_and_gaps_is_scored_as_the_model_scores_it(
    spark: Any, customer_model: str
) -> None:
    table = make_customer_table(4000, seed=21).drop(columns=["churned"])
    df = spark.createDataFrame(table.astype(object).where(table.notna(), None)).repartition(4)

    result = score_spark(df, key="customer_id", model_tag=customer_model, keep=["plan"])
    result_frame = result.toPandas().set_index("customer_id").loc[table["customer_id"]]

    assert result_frame["prediction"].tolist() == own_predictions(customer_model, table)
    assert result_frame["plan"].tolist() == table["plan"].tolist()
    assert result_frame["error"].isna().all()


def test_a_row_the_model_raises_on_gets_an_error_and_the_rest_of_its_batch_is_predicted(
    spark: Any, customer_model: str
) -> None:
    strict = save_strict_copy(customer_model, "customers_strict_spark")
    table = make_customer_table(300, seed=5).drop(columns=["churned"])
    table.loc[17, "plan"] = "platinum"  # a category the strict model refuses
    df = spark.createDataFrame(table.astype(object).where(table.notna(), None)).coalesce(1)

    result = score_spark(df, key="customer_id", model_tag=strict).toPandas()

    failed = result[result["error"].notna()]
    assert failed["customer_id"].tolist() == [table.loc[17, "customer_id"]]
    assert failed["error"].iloc[0].startswith("model_error: ")
    assert failed["prediction"].isna().all()
    predicted = result[result["error"].isna()].set_index("customer_id")
    others = table.drop(index=17)
    assert len(predicted) == len(others)
    assert predicted.loc[others["customer_id"], "prediction"].tolist() == own_predictions(
        customer_model, others
    )


def test_a_model_shipped_with_the_job_scores_like_the_one_in_the_store(
    spark: Any, default_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver exports the model under the temp dir; this test's own, removed after it.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    table = flowers(2000, seed=8)
    df = spark.createDataFrame(table).repartition(2)

    shipped = score_spark(df, key="id", model_tag=default_model, ship_model=True).toPandas()

    got = shipped.set_index("id").loc[table["id"], "prediction"].tolist()
    assert got == own_predictions(default_model, table)


def test_a_dataframe_without_the_models_features_is_refused_before_any_job_runs(
    spark: Any, default_model: str
) -> None:
    df = spark.createDataFrame(flowers(10).drop(columns=["petal_width_cm"]))
    with pytest.raises(ValueError, match="petal_width_cm"):
        score_spark(df, key="id", model_tag=default_model)
    with pytest.raises(ValueError, match="no key column 'customer'"):
        score_spark(spark.createDataFrame(flowers(10)), key="customer", model_tag=default_model)


def long_keyed(spark: Any, keys: list[int | None]) -> Any:
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    schema = StructType(
        [StructField("id", LongType(), True)]
        + [StructField(name, DoubleType(), True) for name in FEATURES]
    )
    rows = [(key, 5.1, 3.5, 1.4, 0.2) for key in keys]
    return spark.createDataFrame(rows, schema)


def test_long_keys_above_2_to_the_53_come_back_exact_and_a_null_key_is_refused(
    spark: Any, default_model: str
) -> None:
    big = [2**53 + i for i in range(1, 9)]
    with pytest.raises(ValueError, match=r"rows without a usable key .*: 1 in 'id'"):
        score_spark(long_keyed(spark, [*big, None]), key="id", model_tag=default_model)
    scored = score_spark(long_keyed(spark, big).coalesce(1), key="id", model_tag=default_model)
    assert sorted(row["id"] for row in scored.collect()) == big


def test_a_key_of_several_columns_is_kept_whole(spark: Any, default_model: str) -> None:
    table = flowers(200, seed=12)
    table["bay"] = [i % 4 for i in range(200)]
    scored = score_spark(
        spark.createDataFrame(table).repartition(2), key=["shelf", "id"], model_tag=default_model
    ).toPandas()
    assert scored.columns.tolist()[:3] == ["shelf", "id", "prediction"]
    got = scored.set_index("id").loc[table["id"]]
    assert got["shelf"].tolist() == table["shelf"].tolist()
    assert got["prediction"].tolist() == own_predictions(default_model, table)
    with pytest.raises(ValueError, match="no row order"):
        score_spark(spark.createDataFrame(table), key="@row", model_tag=default_model)


def zip_rows(spark: Any, zips: list[Any], zip_type: Any) -> Any:
    """A DataFrame of the zip model's features, with an account number column (longs with
    gaps, one above 2^53) to keep."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    schema = StructType(
        [
            StructField("id", StringType(), False),
            StructField("zip", zip_type, True),
            StructField("amount", DoubleType(), True),
            StructField("account", LongType(), True),
        ]
    )
    rows = [
        (f"k-{i:04d}", zip_code, 40.0 + i % 20, None if i % 5 == 0 else 2**53 + 1 + i)
        for i, zip_code in enumerate(zips)
    ]
    return spark.createDataFrame(rows, schema)


def test_category_features_reach_the_model_as_written_and_kept_longs_stay_exact(
    spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from pyspark.sql.types import LongType, StringType

    tag, pipeline = import_zip_model(tmp_path_factory.mktemp("zips"))
    texts = zip_table(400, seed=11)["zip"].tolist()
    numbers = [None if z is None or z != z else int(z) for z in texts]
    for zips, zip_type in ((texts, StringType()), (numbers, LongType())):
        df = zip_rows(spark, zips, zip_type).repartition(3)
        scored = score_spark(df, key="id", model_tag=tag, keep=["account"])
        assert scored.schema["account"].dataType == LongType()
        rows = {row["id"]: row for row in scored.collect()}
        original = {row["id"]: row for row in df.collect()}
        assert {k: r["account"] for k, r in rows.items()} == {
            k: r["account"] for k, r in original.items()
        }
        ordered = sorted(original)
        # The model's own answer on the zips as text: 10001 and 94105, never "10001.0".
        frame = pd.DataFrame(
            {
                "zip": [
                    None if original[k]["zip"] is None else str(original[k]["zip"]) for k in ordered
                ],
                "amount": [original[k]["amount"] for k in ordered],
            }
        )
        assert [rows[k]["prediction"] for k in ordered] == pipeline.predict(frame).tolist()
        own = pipeline.predict_proba(frame)
        for i, label in enumerate(pipeline.classes_):
            got = [rows[k][f"probability_{label}"] for k in ordered]
            np.testing.assert_allclose(got, own[:, i], rtol=1e-12)


def test_a_kept_column_named_like_an_output_column_is_refused(
    spark: Any, default_model: str
) -> None:
    table = flowers(10).assign(prediction="old", error="old", probability_setosa=0.5)
    df = spark.createDataFrame(table)
    for keep in (["prediction"], ["error"], ["probability_setosa"], ["id"]):
        with pytest.raises(ValueError, match=repr(keep[0])):
            score_spark(df, key="id", model_tag=default_model, keep=keep)


def test_a_datetime_feature_is_scored_as_the_model_scores_it(
    spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tag, pipeline = import_visit_model(tmp_path_factory.mktemp("visits"))
    frame = visit_table(300, seed=14)
    scored = score_spark(spark.createDataFrame(frame).repartition(2), key="id", model_tag=tag)
    rows = {row["id"]: row for row in scored.collect()}
    assert [rows[k]["error"] for k in frame["id"]] == [None] * len(frame)
    own = pipeline.predict(frame[["when"]]).tolist()
    assert [rows[k]["prediction"] for k in frame["id"]] == own


def captured(root: Path) -> pd.DataFrame:
    """What a capture directory holds, read as anyone would: pyarrow, Hive partitions as
    text."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(
        pa.schema([("model", pa.string()), ("version", pa.string()), ("date", pa.string())]),
        flavor="hive",
    )
    files = ds.dataset(root / "predictions", format="parquet", partitioning=partitioning)
    return files.to_table().to_pandas()  # type: ignore[no-any-return]


def test_scoring_with_a_capture_dir_writes_every_row_in_the_servers_capture_layout(
    spark: Any, customer_model: str, tmp_path: Path
) -> None:
    strict = save_strict_copy(customer_model, "customers_strict_capture")
    table = make_customer_table(500, seed=21).drop(columns=["churned"])
    table.loc[40, "plan"] = "platinum"  # the strict model raises on it
    table["shelf"] = [f"s{i % 3}" for i in range(len(table))]
    df = spark.createDataFrame(table.astype(object).where(table.notna(), None)).repartition(3)

    result = score_spark(
        df, key=["shelf", "customer_id"], model_tag=strict, capture_dir=tmp_path
    ).toPandas()

    rows = captured(tmp_path)
    name, version = strict.split(":")
    assert len(rows) == len(table) == len(result)
    assert set(rows["model"]) == {name} and set(rows["version"]) == {version}
    assert set(rows["source"]) == {"spark"} and rows["request_id"].nunique() == 1
    assert set(rows["key_type"]) == {"composite"}
    by_key = rows.set_index("key")
    for _, row in result.iterrows():
        got = by_key.loc[f'["{row["shelf"]}","{row["customer_id"]}"]']
        if pd.isna(row["error"]):
            assert pd.isna(got["error"]) and got["prediction"] == row["prediction"]
            assert got["probability_yes"] == row["probability_yes"]
        else:
            assert got["error"] == "model_error" and pd.isna(got["prediction"])
            assert row["error"] == f"model_error: {got['error_message']}"
    source = table.set_index("customer_id")
    for _, got in rows.iterrows():
        sent = source.loc[got["key"].split('"')[3]]
        assert got["feature_plan"] == sent["plan"]
        assert got["feature_tenure_months"] == sent["tenure_months"] or (
            pd.isna(got["feature_tenure_months"]) and pd.isna(sent["tenure_months"])
        )
