"""The value a model gets is the value in the user's table, read as the model's own feature
type, from every reader and route (issue 20 items 2, 3 and 6).

The server here is the real validate stage and the real model stage in-process (an httpx
transport), so that the client, keyed-score and /predict_file are tested fast; tests/e2e
does the same against a real `bentoml serve`. Every expectation is the model's own answer
on the user's original frame.
"""

from __future__ import annotations

import asyncio
import decimal
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from exact_values import (
    ModelServer,
    import_visit_model,
    import_zip_model,
    visit_table,
    zip_table,
)
from sklearn.linear_model import LogisticRegression
from support import own_predictions, write_table

from keyed_serving.client import cli
from keyed_serving.client.keyed_client import KeyedClient
from keyed_serving.model.importing import save_model
from keyed_serving.serving.file_scoring import InvalidFile, score_file
from keyed_serving.serving.validate import validate_request


@pytest.fixture(scope="module")
def zip_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    return import_zip_model(tmp_path_factory.mktemp("zips"))


@pytest.fixture(scope="module")
def visit_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    return import_visit_model(tmp_path_factory.mktemp("visits"))


def read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True, dtype=False, precise_float=True)


def keyed_score(
    monkeypatch: pytest.MonkeyPatch, server: ModelServer, *args: str
) -> tuple[int, str]:
    """keyed-score's own main, talking to ``server``: (exit status, what it printed)."""

    def patched(*args: Any, **kwargs: Any) -> KeyedClient:
        # The server's transport in place of the one keyed-score makes (it stops on signals).
        return KeyedClient(*args, **{**kwargs, "transport": httpx.MockTransport(server.handle)})

    monkeypatch.setattr(cli, "KeyedClient", patched)
    return cli.main([*args, "--url", "http://model"]), ""


def cells(column: pd.Series) -> list[Any]:
    """A column's values, a missing one (or an empty CSV cell) as None."""
    return [None if pd.isna(v) or v == "" else v for v in column.tolist()]


def assert_the_models_own(
    scored: pd.DataFrame, pipeline: Any, frame: pd.DataFrame, digits: float = 1e-12
) -> None:
    features = list(pipeline.feature_names_in_)
    assert scored["prediction"].tolist() == pipeline.predict(frame[features]).tolist()
    own = pipeline.predict_proba(frame[features])
    for i, label in enumerate(pipeline.classes_):
        column = scored[f"probability_{label}"].astype(float).to_numpy()
        np.testing.assert_allclose(column, own[:, i], rtol=digits)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_category_cells_reach_the_model_as_written_from_every_table_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, zip_model: tuple[str, Any], suffix: str
) -> None:
    tag, pipeline = zip_model
    frame = zip_table(300, seed=5)
    source = write_table(frame, tmp_path / f"in{suffix}")
    out = tmp_path / f"out{suffix}"
    status, _ = keyed_score(monkeypatch, ModelServer(tag), str(source), "--key", "id",
                            "--out", str(out), "--keep", "zip")  # fmt: skip
    assert status == 0
    scored = read(out)
    assert scored["id"].tolist() == frame["id"].tolist()
    assert_the_models_own(scored, pipeline, frame)
    assert cells(scored["zip"]) == cells(frame["zip"])  # "02134", not 2134


def test_category_cells_of_a_dataframe_and_of_an_uploaded_file_reach_the_model_as_they_are(
    tmp_path: Path, zip_model: tuple[str, Any]
) -> None:
    tag, pipeline = zip_model
    frame = zip_table(300, seed=6)
    server = ModelServer(tag)
    assert_the_models_own(server.client().score(frame, "id"), pipeline, frame)
    for suffix in (".csv", ".parquet", ".jsonl"):
        target = tmp_path / f"scored{suffix}"
        source = write_table(frame, tmp_path / f"upload{suffix}")
        asyncio.run(
            score_file(source, target, "id", ["zip"], server.spec, server.predict_batch, 128)
        )
        assert_the_models_own(read(target), pipeline, frame)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_an_integer_category_column_with_a_gap_is_sent_as_its_integers_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, zip_model: tuple[str, Any], suffix: str
) -> None:
    tag, pipeline = zip_model
    zips = [10001, None, 94105, 10001]
    typed = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "zip": pd.array(zips, dtype="Int64"), "amount": 50.0}
    )
    source = write_table(typed, tmp_path / f"in{suffix}")
    out = tmp_path / f"out{suffix}"
    status, _ = keyed_score(monkeypatch, ModelServer(tag), str(source), "--key", "id",
                            "--out", str(out))  # fmt: skip
    assert status == 0
    as_text = typed.assign(zip=["10001", np.nan, "94105", "10001"])
    assert_the_models_own(read(out), pipeline, as_text)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", "frame"])
def test_a_float_category_column_of_whole_numbers_is_sent_as_its_integers_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, zip_model: tuple[str, Any], suffix: str
) -> None:
    """pandas' own form of an integer column with a gap is float64: 94105.0 was sent as
    "94105.0", a category the model never saw (found by a stranger's review)."""
    tag, pipeline = zip_model
    typed = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "zip": [10001.0, np.nan, 94105.0, 10001.0], "amount": 50.0}
    )
    as_text = typed.assign(zip=["10001", np.nan, "94105", "10001"])
    if suffix == "frame":
        assert_the_models_own(ModelServer(tag).client().score(typed, "id"), pipeline, as_text)
        return
    source = write_table(typed, tmp_path / f"in{suffix}")
    out = tmp_path / f"out{suffix}"
    status, _ = keyed_score(monkeypatch, ModelServer(tag), str(source), "--key", "id",
                            "--out", str(out))  # fmt: skip
    assert status == 0
    assert_the_models_own(read(out), pipeline, as_text)


def test_kept_columns_are_written_back_as_they_were_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, zip_model: tuple[str, Any]
) -> None:
    tag, _ = zip_model
    big = 2**53 + 1  # 9007199254740993: not a float
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "zip": ["02134", None, "00501"],
            "amount": [1.0, 2.0, 3.0],
            "account": pa.array([big, None, 7], pa.int64()),
            "balance": pa.array(
                [decimal.Decimal("12345678901234567890.25"), None, decimal.Decimal("0.10")],
                pa.decimal128(38, 2),
            ),
        }
    )
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    keep = "zip,account,balance"
    server = ModelServer(tag)
    out = tmp_path / "out.parquet"
    assert keyed_score(monkeypatch, server, str(source), "--key", "id", "--out", str(out),
                       "--keep", keep)[0] == 0  # fmt: skip
    written = pq.read_table(out)
    for name in keep.split(","):
        assert written.schema.field(name).type == table.schema.field(name).type, name
        assert written.column(name).to_pylist() == table.column(name).to_pylist(), name

    csv_source = tmp_path / "in.csv"
    csv_source.write_text(
        "id,zip,amount,account,balance\n"
        "a,02134,1.0,9007199254740993,12345678901234567890.25\n"
        "b,,2.0,,\n"
        "c,00501,3.0,7,0.10\n"
    )
    csv_out = tmp_path / "out.csv"
    assert keyed_score(monkeypatch, server, str(csv_source), "--key", "id", "--out",
                       str(csv_out), "--keep", keep)[0] == 0  # fmt: skip
    lines = csv_out.read_text().splitlines()
    assert lines[1].endswith(",02134,9007199254740993,12345678901234567890.25")
    assert lines[2].endswith(",,,")
    assert lines[3].endswith(",00501,7,0.10")

    jsonl_source = tmp_path / "in.jsonl"
    jsonl_source.write_text(
        '{"id": "a", "zip": "02134", "amount": 1.0, "account": 9007199254740993}\n'
        '{"id": "b", "zip": null, "amount": 2.0, "account": null}\n'
    )
    jsonl_out = tmp_path / "out.jsonl"
    assert keyed_score(monkeypatch, server, str(jsonl_source), "--key", "id", "--out",
                       str(jsonl_out), "--keep", "zip,account")[0] == 0  # fmt: skip
    rows = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert [(r["zip"], r["account"]) for r in rows] == [("02134", big), (None, None)]


@pytest.mark.parametrize(
    ("key", "keep", "says"),
    [
        ("id", "prediction", "'prediction'"),
        ("id", "error", "'error'"),
        ("id", "probability_east", "'probability_east'"),
        ("id", "id", "key column 'id' is in the scored table already"),
        ("prediction", "", "key column 'prediction'"),
    ],
)
def test_a_kept_or_key_column_named_like_an_output_column_is_refused_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    zip_model: tuple[str, Any],
    key: str,
    keep: str,
    says: str,
) -> None:
    tag, _ = zip_model
    frame = zip_table(20, seed=7).assign(
        prediction=[f"old-{i}" for i in range(20)], error="x", probability_east=0.5
    )
    source = write_table(frame, tmp_path / "old.csv")
    server = ModelServer(tag)
    out = tmp_path / "out.csv"
    status, _ = keyed_score(monkeypatch, server, str(source), "--key", key, "--out", str(out),
                            "--keep", keep)  # fmt: skip
    assert status == 2
    assert says in capsys.readouterr().err
    assert server.requests == 0 and not out.exists()

    with pytest.raises(ValueError, match=says):
        server.client().score(frame, key, keep=[c for c in keep.split(",") if c])
    assert server.requests == 0

    with pytest.raises(InvalidFile, match=says):
        asyncio.run(
            score_file(
                source,
                tmp_path / "scored.csv",
                key,
                [c for c in keep.split(",") if c],
                server.spec,
                server.predict_batch,
                128,
            )
        )
    assert server.requests == 0


def test_an_uploaded_file_keeping_prediction_gets_400(asgi_client: Any) -> None:
    content = b"id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,prediction\n"
    content += b"a,5.1,3.5,1.4,0.2,virginica\n"
    response = asgi_client.post(
        "/predict_file",
        files={"file": ("old.csv", content)},
        data={"key": "id", "keep": "prediction"},
    )
    assert response.status_code == 400
    assert "'prediction'" in response.json()["error"]


def test_a_datetime_feature_is_imported_as_one_and_recorded_with_its_dtype(
    visit_model: tuple[str, Any],
) -> None:
    tag, _ = visit_model
    (feature,) = ModelServer(tag).spec.features
    assert (feature.name, feature.type, feature.dtype) == ("when", "datetime", "datetime64[ns]")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_datetime_feature_is_scored_as_the_model_scores_it_from_every_table_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, visit_model: tuple[str, Any], suffix: str
) -> None:
    tag, pipeline = visit_model
    frame = visit_table(300, seed=8)
    source = write_table(frame, tmp_path / f"in{suffix}")
    out = tmp_path / f"out{suffix}"
    server = ModelServer(tag)
    status, _ = keyed_score(monkeypatch, server, str(source), "--key", "id", "--out", str(out))
    assert status == 0
    assert_the_models_own(read(out), pipeline, frame)

    target = tmp_path / f"scored{suffix}"
    asyncio.run(score_file(source, target, "id", [], server.spec, server.predict_batch, 128))
    scored = read(target)
    assert cells(scored["error"]) == [None] * len(frame)
    assert_the_models_own(scored, pipeline, frame)


def test_a_datetime_feature_of_a_dataframe_is_scored_as_the_model_scores_it(
    visit_model: tuple[str, Any],
) -> None:
    tag, pipeline = visit_model
    frame = visit_table(300, seed=9)
    assert_the_models_own(ModelServer(tag).client().score(frame, "id"), pipeline, frame)


def test_a_datetime_that_is_not_iso_text_fails_only_its_own_key(
    visit_model: tuple[str, Any],
) -> None:
    tag, _ = visit_model
    server = ModelServer(tag)
    values = ["2024-01-05T10:30:00", "05/01/2024", 1704450600000, "2024-01-05T10:30:00+02:00"]
    batch = validate_request(
        {"keys": ["a", "b", "c", "d"], "columns": {"when": values}, "errors": "per_instance"},
        server.spec,
        100,
    )
    assert batch.keys == ["a"]
    reasons = {f.key: f.details[0].msg for f in batch.failures}
    assert "ISO 8601" in reasons["b"] and "ISO 8601" in reasons["c"]
    assert "without a time zone" in reasons["d"]


def test_a_datetime_feature_with_a_time_zone_is_scored_in_its_zone_from_every_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tag, pipeline = import_visit_model(tmp_path, zone="Europe/Paris")
    server = ModelServer(tag)
    assert server.spec.features[0].dtype == "datetime64[ns, Europe/Paris]"
    frame = visit_table(300, seed=10, zone="Europe/Paris")
    assert_the_models_own(server.client().score(frame, "id"), pipeline, frame)
    for suffix in (".csv", ".parquet", ".jsonl"):  # +01:00 / +02:00 offsets; UTC "Z"
        source = write_table(frame, tmp_path / f"in{suffix}")
        out = tmp_path / f"out{suffix}"
        status, _ = keyed_score(monkeypatch, server, str(source), "--key", "id",
                                "--out", str(out))  # fmt: skip
        assert status == 0
        assert_the_models_own(read(out), pipeline, frame)


def test_a_model_with_a_feature_named_prediction_answers_with_its_own_prediction(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(12)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(200)], "prediction": rng.normal(size=200)})
    labels = np.where(frame["prediction"] > 0, 1, 0)
    pipeline = LogisticRegression().fit(frame[["prediction"]], labels)
    tag = save_model("old_scores", pipeline, frame, key="id")
    source = write_table(frame, tmp_path / "old.csv")
    server = ModelServer(tag)
    out = tmp_path / "out.csv"
    assert keyed_score(monkeypatch, server, str(source), "--key", "id", "--out", str(out))[0] == 0
    scored = pd.read_csv(out)
    assert scored["prediction"].tolist() == pipeline.predict(frame[["prediction"]]).tolist()
    status, _ = keyed_score(monkeypatch, server, str(source), "--key", "id", "--out",
                            str(tmp_path / "kept.csv"), "--keep", "prediction")  # fmt: skip
    assert status == 2 and "'prediction'" in capsys.readouterr().err


def test_resuming_rewrites_the_output_with_its_kept_cells_as_they_were(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, zip_model: tuple[str, Any]
) -> None:
    tag, _ = zip_model
    frame = zip_table(40, seed=13)
    source = write_table(frame, tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    server = ModelServer(tag)
    args = [str(source), "--key", "id", "--out", str(out), "--keep", "zip"]
    assert keyed_score(monkeypatch, server, *args)[0] == 0
    lines = out.read_text().splitlines()
    # An interrupted run: a row written twice, so --resume rewrites the output.
    out.write_text("\n".join([*lines[:20], lines[5]]) + "\n")
    assert keyed_score(monkeypatch, server, *args, "--resume")[0] == 0
    scored = read(out)
    assert sorted(scored["id"]) == sorted(frame["id"])
    by_key = scored.set_index("id").loc[frame["id"]]
    assert cells(by_key["zip"]) == cells(frame["zip"])  # 02134 still, not 2134


def test_a_model_trained_on_a_csv_takes_its_categories_as_the_text_scoring_sends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train

    rng = np.random.default_rng(15)
    flag = rng.random(300) < 0.5
    frame = pd.DataFrame(
        {
            "id": [f"f{i}" for i in range(300)],
            "flag": np.where(flag, "true", "false"),  # pandas alone would read booleans
            "x": np.round(rng.normal(size=300), 3),
            "y": np.where(flag ^ (rng.random(300) < 0.05), "yes", "no"),
        }
    )
    source = write_table(frame, tmp_path / "flags.csv")
    assert train.main(["--table", str(source), "--target", "y", "--key", "id", "--name", "f"]) == 0
    tag = capsys.readouterr().out.split()[1]
    server = ModelServer(tag)
    (flag_feature,) = [f for f in server.spec.features if f.name == "flag"]
    assert flag_feature.categories == ["false", "true"]  # as written, and as scoring sends
    out = tmp_path / "out.csv"
    assert keyed_score(monkeypatch, server, str(source), "--key", "id", "--out", str(out))[0] == 0
    assert read(out)["prediction"].tolist() == own_predictions(tag, frame)
