"""Models of other shapes and names, served by a real `bentoml serve` on every route (issue
20, items 8 and 9): a classifier served by ``predict`` alone answers its own text labels
on /predict, V2 (tritonclient, BYTES) and /predict_file; a model with a feature named
``key`` is served on V2 under the key input its metadata names."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from sklearn.linear_model import Ridge
from sklearn.svm import SVC
from support import served

import keyed_serving
from keyed_serving.client.keyed_client import KeyedClient

pytestmark = pytest.mark.slow


def rows(n: int, seed: int) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    x1, x2 = generator.normal(size=n), generator.normal(size=n)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "x1": x1,
            "x2": x2,
            "y": np.where(x1 + 0.5 * x2 + generator.normal(scale=0.5, size=n) > 0, "east", "west"),
        }
    )


def triton_infer(
    url: str, name: str, tensors: list[tuple[str, np.ndarray, str]], binary: bool
) -> triton.InferResult:
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    inputs = []
    for input_name, values, datatype in tensors:
        made = triton.InferInput(input_name, [len(values)], datatype)
        made.set_data_from_numpy(values, binary_data=binary)
        inputs.append(made)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("key", "prediction")]
    return client.infer(name, inputs, outputs=outputs)


def text(values: Any) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


def test_a_classifier_served_by_predict_alone_answers_its_own_labels_on_every_route() -> None:
    sample, table = rows(300, seed=1), rows(120, seed=2)
    model = SVC().fit(sample[["x1", "x2"]], sample["y"])  # no predict_proba: labels only
    tag = keyed_serving.save_model(
        "svc_labels", model, sample, key="id", target="y", task="regression"
    )
    own = model.predict(table[["x1", "x2"]]).tolist()
    keys = table["id"].tolist()
    instances = [
        {"key": key, "features": {"x1": x1, "x2": x2}}
        for key, x1, x2 in zip(keys, table["x1"], table["x2"], strict=True)
    ]
    columns = {"keys": keys, "columns": {"x1": table["x1"].tolist(), "x2": table["x2"].tolist()}}
    with served(MODEL_TAG=tag) as url:
        info = httpx.get(f"{url}/model_info", timeout=30).json()
        assert info["holdout_score"]["metric"] == "accuracy_on_import_sample"
        by_rows = httpx.post(f"{url}/predict", json={"instances": instances}, timeout=60)
        assert by_rows.status_code == 200, by_rows.text
        assert [p["prediction"] for p in by_rows.json()["predictions"]] == own
        by_columns = httpx.post(f"{url}/predict", json=columns, timeout=60)
        assert by_columns.status_code == 200, by_columns.text
        assert by_columns.json()["predictions"] == own

        name = tag.split(":")[0]
        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        outputs = {o["name"]: o for o in client.get_model_metadata(name)["outputs"]}
        assert outputs["prediction"]["datatype"] == "BYTES"
        for binary in (True, False):
            result = triton_infer(
                url,
                name,
                [
                    ("key", np.array(keys, dtype=object), "BYTES"),
                    ("x1", table["x1"].to_numpy(), "FP64"),
                    ("x2", table["x2"].to_numpy(), "FP64"),
                ],
                binary,
            )
            assert text(result.as_numpy("key")) == keys
            assert text(result.as_numpy("prediction")) == own

        for file_name, content in (
            ("t.csv", table.drop(columns="y").to_csv(index=False).encode()),
            ("t.parquet", table.drop(columns="y").to_parquet(index=False)),
        ):
            answer = httpx.post(
                f"{url}/predict_file",
                files={"file": (file_name, content)},
                data={"key": "id"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-failed"] == "0", answer.content[:500]
            body = io.BytesIO(answer.content)
            back = pd.read_csv(body) if file_name.endswith(".csv") else pd.read_parquet(body)
            assert back["id"].tolist() == keys
            assert back["prediction"].tolist() == own

        scored = KeyedClient([url]).score(table.drop(columns="y"), "id")
        assert scored["prediction"].tolist() == own


def test_a_feature_named_key_is_served_on_v2_under_the_key_input_the_metadata_names() -> None:
    table = rows(200, seed=3).rename(columns={"x1": "key"})
    model = Ridge().fit(table[["key", "x2"]], 3 * table["key"] - table["x2"])
    tag = keyed_serving.save_model("named_key", model, table[["id", "key", "x2"]], key="id")
    own = model.predict(table[["key", "x2"]]).tolist()
    keys = table["id"].tolist()
    with served(MODEL_TAG=tag) as url:
        name = tag.split(":")[0]
        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        metadata = client.get_model_metadata(name)
        key_input = metadata["properties"]["key_input"]
        assert [i["name"] for i in metadata["inputs"]] == [key_input, "key", "x2"]
        for binary in (True, False):
            result = triton_infer(
                url,
                name,
                [
                    (key_input, np.array(keys, dtype=object), "BYTES"),
                    ("key", table["key"].to_numpy(), "FP64"),
                    ("x2", table["x2"].to_numpy(), "FP64"),
                ],
                binary,
            )
            assert text(result.as_numpy("key")) == keys
            assert result.as_numpy("prediction").tolist() == own

        instances = [
            {"key": k, "features": {"key": v, "x2": x2}}
            for k, v, x2 in zip(keys, table["key"], table["x2"], strict=True)
        ]
        by_rows = httpx.post(f"{url}/predict", json={"instances": instances}, timeout=60)
        assert by_rows.status_code == 200, by_rows.text
        assert [p["prediction"] for p in by_rows.json()["predictions"]] == own
        body = {"keys": keys, "columns": {"key": table["key"].tolist(), "x2": table["x2"].tolist()}}
        by_columns = httpx.post(f"{url}/predict", json=body, timeout=60)
        assert by_columns.status_code == 200, by_columns.text
        assert by_columns.json()["predictions"] == own
