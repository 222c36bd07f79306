"""/predict_file and its task variant, through BentoML's ASGI app in-process."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient
from support import own_predictions, served

from keyed_serving.serving import file_scoring

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture
def client(asgi_client: TestClient) -> TestClient:
    return asgi_client


def flowers(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (n, 4)), 1), columns=FEATURES)
    frame.insert(0, "id", [f"00{i}" for i in range(n)])  # leading zeros must survive
    frame["shelf"] = [f"s{i % 4}" for i in range(n)]
    return frame


def encode(frame: pd.DataFrame, suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".csv":
        frame.to_csv(buffer, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(buffer)
    else:
        frame.to_json(buffer, orient="records", lines=True)
    return buffer.getvalue()


def decode(content: bytes, suffix: str) -> pd.DataFrame:
    if suffix == ".csv":
        return pd.read_csv(io.BytesIO(content), dtype={"id": str})
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(content))
    return pd.read_json(io.BytesIO(content), lines=True, dtype=False)


def upload(
    client: TestClient, content: bytes, name: str, path: str = "/predict_file", **fields: str
) -> Any:
    return client.post(path, files={"file": (name, content)}, data=fields)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_file_comes_back_scored_in_its_own_format(
    client: TestClient, default_model: str, suffix: str
) -> None:
    frame = flowers(2_500, seed=1)
    response = upload(client, encode(frame, suffix), f"flowers{suffix}", key="id", keep="shelf")
    assert response.status_code == 200, response.text
    scored = decode(response.content, suffix)
    assert scored["id"].tolist() == frame["id"].tolist()
    assert scored["prediction"].tolist() == own_predictions(default_model, frame)
    assert scored["shelf"].tolist() == frame["shelf"].tolist()
    assert scored["error"].isna().all()
    assert response.headers["x-rows"] == "2500" and response.headers["x-failed"] == "0"


def test_a_bad_cell_fails_only_its_own_key(client: TestClient) -> None:
    frame = flowers(50, seed=2).astype({"petal_width_cm": object})
    frame.loc[7, "petal_width_cm"] = "wide"
    response = upload(client, encode(frame, ".csv"), "f.csv", key="id")
    scored = decode(response.content, ".csv")
    failed = scored[scored["error"].notna()]
    assert failed["id"].tolist() == ["007"]
    assert "wrong_type" in failed["error"].iloc[0]
    assert scored["prediction"].notna().sum() == 49


@pytest.mark.parametrize(
    ("change", "name", "says"),
    [
        (lambda f: f, "flowers.txt", "unknown format"),
        (lambda f: f.drop(columns=["id"]), "flowers.csv", "no key column 'id'"),
        (lambda f: f.drop(columns=["petal_width_cm"]), "flowers.csv", "petal_width_cm"),
        (lambda f: f.assign(id=["dup"] * len(f)), "flowers.csv", "duplicated key"),
    ],
)
def test_a_file_that_cannot_be_scored_gets_400_saying_why(
    client: TestClient, change: Any, name: str, says: str
) -> None:
    response = upload(client, encode(change(flowers(20)), ".csv"), name, key="id")
    assert response.status_code == 400 and says in response.json()["error"]


@pytest.mark.slow
def test_the_task_variant_scores_a_file_in_the_background(default_model: str) -> None:
    # BentoML creates the task store only under `bentoml serve`: a real server here.
    frame = flowers(3_000, seed=3)
    with served(MODEL_TAG=default_model) as url, httpx.Client(base_url=url, timeout=60) as http:
        submitted = http.post(
            "/predict_file_task/submit",
            data={"key": "id"},
            files={"file": ("big.csv", encode(frame, ".csv"))},
        )
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        deadline = time.monotonic() + 120
        status = "in_progress"
        while status == "in_progress" and time.monotonic() < deadline:
            time.sleep(0.1)  # the task API has no push; polling it is its protocol
            status = http.get("/predict_file_task/status", params={"task_id": task_id}).json()[
                "status"
            ]
        assert status == "completed"
        result = http.get("/predict_file_task/get", params={"task_id": task_id})
    scored = decode(result.content, ".csv")
    assert scored["id"].tolist() == frame["id"].tolist()
    assert scored["prediction"].tolist() == own_predictions(default_model, frame)


def test_predict_is_answered_while_a_file_is_being_scored(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading, answered = threading.Event(), threading.Event()
    predict_answered_meanwhile: list[bool] = []
    read_the_file = file_scoring.iter_batches

    def a_slow_read(*args: Any, **kwargs: Any) -> Iterator[pd.DataFrame]:
        reading.set()
        # Hang guard only: with the file read on the event loop, /predict waits for this.
        predict_answered_meanwhile.append(answered.wait(timeout=30))
        yield from read_the_file(*args, **kwargs)

    monkeypatch.setattr(file_scoring, "iter_batches", a_slow_read)
    with ThreadPoolExecutor(1) as pool:
        scored = pool.submit(upload, client, encode(flowers(300), ".csv"), "f.csv", key="id")
        assert reading.wait(timeout=60)
        features = flowers(1).drop(columns=["id", "shelf"]).iloc[0].to_dict()
        predicted = client.post("/predict", json={"instances": [{"key": 1, "features": features}]})
        answered.set()
        assert predicted.status_code == 200
        assert scored.result(timeout=60).status_code == 200
    assert predict_answered_meanwhile == [True]


@pytest.mark.slow
def test_a_second_task_is_refused_with_429_while_the_first_runs(default_model: str) -> None:
    big = encode(flowers(100_000, seed=4), ".csv")
    with (
        served(MODEL_TAG=default_model, KEYED_MAX_TASKS="1") as url,
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        first = http.post(
            "/predict_file_task/submit", data={"key": "id"}, files={"file": ("a.csv", big)}
        )
        assert first.status_code == 200, first.text
        task_id = first.json()["task_id"]
        status = http.get("/predict_file_task/status", params={"task_id": task_id})
        second = http.post(
            "/predict_file_task/submit", data={"key": "id"}, files={"file": ("b.csv", b"id\n")}
        )
        retried = http.post("/predict_file_task/retry", params={"task_id": task_id})
        after = http.get("/predict_file_task/status", params={"task_id": task_id})
        assert status.json()["status"] == after.json()["status"] == "in_progress"
        assert second.status_code == retried.status_code == 429
        assert second.headers["retry-after"] and retried.headers["retry-after"]


def test_in_a_csv_only_an_empty_cell_is_missing(client: TestClient) -> None:
    frame = flowers(10, seed=4).astype({"petal_width_cm": object})
    frame.loc[:5, "id"] = ["NA", "None", "null", "nan", "N/A", "#N/A"]  # keys, not gaps
    frame.loc[7, "petal_width_cm"] = "NA"  # not a number, and not a missing one either
    frame.loc[8, "petal_width_cm"] = None  # an empty cell: missing, imputed by the model
    response = upload(client, encode(frame, ".csv"), "f.csv", key="id")
    assert response.status_code == 200, response.text
    scored = pd.read_csv(io.BytesIO(response.content), dtype=str, keep_default_na=False)
    assert scored["id"].tolist() == frame["id"].tolist()
    failed = scored[scored["error"] != ""]
    assert failed["id"].tolist() == ["007"] and "wrong_type" in failed["error"].iloc[0]


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n", "header.csv"),
        (b"id,sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\r\n", "crlf.csv"),
        (b"", "empty.csv"),
        (b"", "empty.jsonl"),
        (b"\n\n", "blank.jsonl"),
    ],
)
def test_a_file_without_rows_gets_400_saying_it_has_no_rows(
    client: TestClient, content: bytes, name: str
) -> None:
    response = upload(client, content, name, key="id")
    assert response.status_code == 400, response.text
    assert "no rows" in response.json()["error"], response.text


def test_a_csv_with_a_bom_and_crlf_line_ends_is_scored_by_its_key(client: TestClient) -> None:
    frame = flowers(5)
    text = frame.to_csv(index=False, lineterminator="\r\n")
    response = upload(client, "\ufeff".encode() + text.encode(), "bom.csv", key="id")
    assert response.status_code == 200, response.text
    scored = decode(response.content, ".csv")
    assert [str(k) for k in scored["id"]] == [str(k) for k in frame["id"]]
