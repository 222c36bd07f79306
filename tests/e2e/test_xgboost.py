"""XGBoost as a first-class model, served by a real `bentoml serve`: an XGBClassifier (with
a native categorical feature) and an XGBRegressor, imported with keyed-import, answer
through /predict, the Open Inference Protocol (tritonclient) and keyed-score what the
model itself answers on the user's own frame, within float32 precision (XGBoost computes
in float32)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
import xgboost
from support import ROOT, Server

pytestmark = pytest.mark.slow
FLOAT32 = float(np.finfo(np.float32).eps)
NUMBERS = ["spend", "visits"]
FEATURES = [*NUMBERS, "colour"]
COLOURS = ["red", "green", "blue", "amber"]


def shop_table(rows: int, seed: int) -> pd.DataFrame:
    """Numbers with gaps and a pandas categorical in a chosen order, keyed by ``order_id``."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "order_id": [f"o-{seed}-{i:05d}" for i in range(rows)],
            "spend": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "visits": rng.poisson(3.0, rows).astype(float),
            "colour": pd.Categorical(rng.choice(COLOURS, rows), categories=COLOURS),
        }
    )
    table.loc[::11, "spend"] = np.nan
    score = table["spend"].fillna(60) / 60 + (table["colour"] == "green") - table["visits"] / 4
    table["segment"] = np.digitize(score + rng.normal(0, 0.3, rows), [0.0, 1.0])
    table["basket"] = score * 10 + rng.normal(0, 1, rows)
    return table


def keyed_import(model: Any, sample: Path, name: str, target: str, tmp: Path) -> str:
    path = tmp / f"{name}.joblib"
    joblib.dump(model, path)
    out = subprocess.run(
        [sys.executable, "-m", "keyed_serving.model.importing", str(path), "--sample",
         str(sample), "--name", name, "--key", "order_id", "--target", target],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[1]


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    table = shop_table(1500, seed=1)
    sample = tmp_path_factory.mktemp("xgboost") / "orders.parquet"
    table.to_parquet(sample)
    return table, sample


@pytest.fixture(scope="module")
def classifier(
    training: tuple[pd.DataFrame, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str, xgboost.XGBClassifier]]:
    table, sample = training
    model = xgboost.XGBClassifier(n_estimators=30, enable_categorical=True)
    model.fit(table[FEATURES], table["segment"])
    segments = sample.with_name("segments.parquet")
    table[["order_id", *FEATURES, "segment"]].to_parquet(segments)
    tag = keyed_import(model, segments, "xgb_segments", "segment", tmp_path_factory.mktemp("m"))
    server = Server(MODEL_TAG=tag)
    yield server, tag, model
    server.stop()


@pytest.fixture(scope="module")
def regressor(
    training: tuple[pd.DataFrame, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str, xgboost.XGBRegressor]]:
    table, sample = training
    model = xgboost.XGBRegressor(n_estimators=30).fit(table[NUMBERS], table["basket"])
    numbers_only = sample.with_name("numbers.parquet")
    table[["order_id", *NUMBERS, "basket"]].to_parquet(numbers_only)
    tag = keyed_import(model, numbers_only, "xgb_basket", "basket", tmp_path_factory.mktemp("m"))
    server = Server(MODEL_TAG=tag)
    yield server, tag, model
    server.stop()


@pytest.fixture(scope="module")
def fresh() -> pd.DataFrame:
    return shop_table(300, seed=2)


def within_float32(served: Any, own: np.ndarray) -> None:
    served = np.asarray(served, dtype=np.float64)
    assert served.shape == own.shape
    assert np.max(np.abs(served - own)) <= FLOAT32


def instances(frame: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        return None if pd.isna(value) else value

    return [
        {"key": row["order_id"], "features": {n: plain(row[n]) for n in names}}
        for _, row in frame.iterrows()
    ]


def v2_inputs(frame: pd.DataFrame, names: list[str]) -> list[triton.InferInput]:
    made = []
    keys = np.array(frame["order_id"].tolist(), dtype=object)
    columns: list[tuple[str, np.ndarray, str]] = [("key", keys, "BYTES")]
    for name in names:
        if name == "colour":
            columns.append((name, np.array(frame[name].astype(str).tolist(), object), "BYTES"))
        else:
            columns.append((name, frame[name].to_numpy(dtype=np.float64), "FP64"))
    for name, values, datatype in columns:
        tensor = triton.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(values, binary_data=True)
        made.append(tensor)
    return made


def v2_infer(server: Server, tag: str, frame: pd.DataFrame, names: list[str]) -> Any:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    result = client.infer(tag.split(":")[0], v2_inputs(frame, names))
    keys = [k.decode() for k in result.as_numpy("key").tolist()]
    assert keys == frame["order_id"].tolist()
    return result


def keyed_score(server: Server, frame: pd.DataFrame, names: list[str], tmp: Path) -> pd.DataFrame:
    source, out = tmp / "orders.csv", tmp / "scored.csv"
    frame[["order_id", *names]].to_csv(source, index=False)
    done = subprocess.run(
        [sys.executable, "-m", "keyed_serving.client.cli", str(source), "--key", "order_id",
         "--url", server.url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scored = pd.read_csv(out, dtype={"order_id": str})
    assert scored["order_id"].tolist() == frame["order_id"].tolist()
    return scored


def test_an_xgboost_classifier_answers_its_own_probabilities_through_predict(
    classifier: tuple[Server, str, xgboost.XGBClassifier], fresh: pd.DataFrame
) -> None:
    server, _, model = classifier
    response = httpx.post(
        f"{server.url}/predict", json={"instances": instances(fresh, FEATURES)}, timeout=60
    )
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["key"] for a in answers] == fresh["order_id"].tolist()
    assert [a["prediction"] for a in answers] == model.predict(fresh[FEATURES]).tolist()
    classes = [str(c) for c in model.classes_]
    within_float32(
        [[a["probabilities"][c] for c in classes] for a in answers],
        model.predict_proba(fresh[FEATURES]),
    )


def test_an_xgboost_classifier_answers_its_own_probabilities_through_v2(
    classifier: tuple[Server, str, xgboost.XGBClassifier], fresh: pd.DataFrame
) -> None:
    server, tag, model = classifier
    result = v2_infer(server, tag, fresh, FEATURES)
    assert result.as_numpy("prediction").tolist() == model.predict(fresh[FEATURES]).tolist()
    within_float32(result.as_numpy("probabilities"), model.predict_proba(fresh[FEATURES]))


def test_an_xgboost_classifier_answers_its_own_probabilities_through_keyed_score(
    classifier: tuple[Server, str, xgboost.XGBClassifier], fresh: pd.DataFrame, tmp_path: Path
) -> None:
    server, _, model = classifier
    scored = keyed_score(server, fresh, FEATURES, tmp_path)
    assert scored["prediction"].tolist() == model.predict(fresh[FEATURES]).tolist()
    columns = [f"probability_{c}" for c in model.classes_]
    within_float32(scored[columns].to_numpy(), model.predict_proba(fresh[FEATURES]))


def test_an_xgboost_regressor_answers_its_own_predict_everywhere(
    regressor: tuple[Server, str, xgboost.XGBRegressor], fresh: pd.DataFrame, tmp_path: Path
) -> None:
    server, tag, model = regressor
    own = model.predict(fresh[NUMBERS])
    response = httpx.post(
        f"{server.url}/predict", json={"instances": instances(fresh, NUMBERS)}, timeout=60
    )
    assert response.status_code == 200, response.text
    within_float32([a["prediction"] for a in response.json()["predictions"]], own)
    within_float32(v2_infer(server, tag, fresh, NUMBERS).as_numpy("prediction"), own)
    within_float32(keyed_score(server, fresh, NUMBERS, tmp_path)["prediction"].to_numpy(), own)
