"""The entry in-process with a capture writer: what each outcome of a request captures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from keyed_serving.capture import layout
from keyed_serving.capture.files import CapturedModel
from keyed_serving.capture.writer import CaptureWriter

FLOWER = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}


@pytest.fixture
def entry(default_model: str, tmp_path: Path) -> Any:
    import service

    made = service.KeyedPrediction()
    made.capture = CaptureWriter(tmp_path, CapturedModel.of(made.spec))
    return made


def captured(entry: Any) -> list[dict[str, Any]]:
    entry.capture.flush()
    root = entry.capture.root / layout.PREDICTIONS
    if not list(root.rglob("*.parquet")):
        return []
    return ds.dataset(root, format="parquet", partitioning="hive").to_table().to_pylist()


def test_answered_instances_are_captured_with_their_answer(entry: Any) -> None:
    body = {
        "instances": [
            {"key": 1, "features": FLOWER},
            {"key": "b", "features": {**FLOWER, "petal_width_cm": "wide"}},
        ],
        "errors": "per_instance",
    }
    answer = orjson.loads(asyncio.run(entry.predict_raw(orjson.dumps(body))).body)
    rows = {row["key"]: row for row in captured(entry)}
    assert set(rows) == {"1", "b"}
    assert rows["1"]["prediction"] == answer["predictions"][0]["prediction"]
    assert rows["1"]["feature_petal_width_cm"] == 0.2 and rows["1"]["source"] == "predict"
    assert rows["b"]["error"] == "wrong_type" and rows["b"]["prediction"] is None
    assert rows["1"]["request_id"] == rows["b"]["request_id"] != "-"


def test_a_request_refused_whole_captures_nothing(entry: Any) -> None:
    bad = {"instances": [{"key": 1, "features": FLOWER}, {"key": 2, "features": {}}]}
    assert asyncio.run(entry.predict_raw(orjson.dumps(bad))).status_code == 400
    assert asyncio.run(entry.predict_raw(b"[")).status_code == 400
    assert captured(entry) == []


def test_a_v2_request_is_captured_as_v2_http(entry: Any) -> None:
    inputs = [{"name": "key", "datatype": "BYTES", "shape": [1], "data": ["v"]}] + [
        {"name": name, "datatype": "FP64", "shape": [1], "data": [value]}
        for name, value in FLOWER.items()
    ]
    name = entry.spec.tag.split(":")[0]
    response = asyncio.run(entry.infer_raw(name, None, orjson.dumps({"inputs": inputs}), None))
    assert response.status_code == 200
    [row] = captured(entry)
    assert (row["key"], row["key_type"], row["source"]) == ("v", "str", "v2_http")


@pytest.mark.parametrize("sample", [1.0, 0.3])
def test_keys_cut_from_a_columnar_body_are_captured_each_with_its_answer(
    entry: Any, sample: float
) -> None:
    """A columnar body of many keys has its keys cut from its text as one column
    (validate.decode_predict_body): every key kept by the sample is captured with its own
    prediction, whole or sampled."""
    entry.capture = CaptureWriter(entry.capture.root, CapturedModel.of(entry.spec), sample=sample)
    keys = [f"row-{i}" for i in range(400)]
    columns = {name: [value + (i % 7) / 10 for i in range(400)] for name, value in FLOWER.items()}
    response = asyncio.run(entry.predict_raw(orjson.dumps({"keys": keys, "columns": columns})))
    answer = orjson.loads(response.body)
    assert response.status_code == 200 and answer["keys"] == keys
    rows = {row["key"]: row for row in captured(entry)}
    expected = dict(zip(keys, answer["predictions"], strict=True))
    assert {key: row["prediction"] for key, row in rows.items()} == {
        key: expected[key] for key in rows
    }
    assert all(rows[f"row-{i}"]["feature_petal_width_cm"] == columns["petal_width_cm"][i]
               for i in range(400) if f"row-{i}" in rows)  # fmt: skip
    assert len(rows) == 400 if sample == 1.0 else 60 < len(rows) < 200
