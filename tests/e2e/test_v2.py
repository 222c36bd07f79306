"""The Open Inference Protocol (KServe V2) with keys, against a real `bentoml serve`, through
tritonclient (a real client none of us wrote) and the raw JSON body MLServer's clients send."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from support import make_customer_table, own_predictions, served
from tritonclient.utils import InferenceServerException

from keyed_serving.model.store import load_spec

pytestmark = pytest.mark.slow
NUMBERS = ("tenure_months", "monthly_spend", "support_tickets")
CATEGORIES = ("plan", "region")


class V2Server:
    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag
        self.name, self.version = tag.split(":")
        self.spec = load_spec(tag)
        self.http = httpx.Client(base_url=url, timeout=60)

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url.removeprefix("http://"), network_timeout=60)


@pytest.fixture(scope="module")
def server(customer_model: str) -> Iterator[V2Server]:
    with served(MODEL_TAG=customer_model) as url:
        yield V2Server(url, customer_model)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_customer_table(300, seed=11)


def inputs_of(
    frame: pd.DataFrame, keys: list[Any], *, binary: bool = True, column: bool = False
) -> list[triton.InferInput]:
    """tritonclient inputs for these rows: ``key`` and one input per feature; NaN and None
    as the protocol's missing values. ``column``: shape [N, 1] instead of [N]."""
    n = len(frame)
    shape = [n, 1] if column else [n]

    def tensor(name: str, values: np.ndarray, datatype: str) -> triton.InferInput:
        made = triton.InferInput(name, shape, datatype)
        made.set_data_from_numpy(values.reshape(shape), binary_data=binary)
        return made

    key_values = np.array(keys, dtype=np.int64 if isinstance(keys[0], int) else object)
    made = [tensor("key", key_values, "INT64" if isinstance(keys[0], int) else "BYTES")]
    for name in NUMBERS:
        made.append(tensor(name, frame[name].to_numpy(dtype=np.float64), "FP64"))
    for name in CATEGORIES:
        text = np.array([v if isinstance(v, str) else "" for v in frame[name]], dtype=object)
        made.append(tensor(name, text, "BYTES"))
    return made


def as_instances(frame: pd.DataFrame, keys: list[Any]) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        return None if isinstance(value, float) and np.isnan(value) else value

    return [
        {"key": key, "features": {n: plain(row[n]) for n in (*NUMBERS, *CATEGORIES)}}
        for key, (_, row) in zip(keys, frame.iterrows(), strict=True)
    ]


def test_health_metadata_and_readiness_answer_as_tritonclient_expects(server: V2Server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(server.name)
    assert client.is_model_ready(server.name, server.version)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(server.name)
    assert metadata["name"] == server.name and metadata["versions"] == [server.version]
    inputs = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    assert inputs == {
        "key": "BYTES",
        **dict.fromkeys(NUMBERS, "FP64"),
        **dict.fromkeys(CATEGORIES, "BYTES"),
    }
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert set(outputs) == {"key", "prediction", "probabilities", "error"}
    assert outputs["probabilities"]["shape"] == [-1, 2]
    assert json.loads(metadata["properties"]["classes"]) == ["no", "yes"]


def test_an_unknown_model_or_version_is_a_404_in_v2_shape(server: V2Server) -> None:
    for path in (
        "/v2/models/nope",
        f"/v2/models/{server.name}/versions/0",
        "/v2/models/nope/ready",
    ):
        response = server.http.get(path)
        assert response.status_code == 404 and "no model" in response.json()["error"]
    body = {"inputs": [{"name": "key", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    response = server.http.post("/v2/models/nope/infer", json=body)
    assert response.status_code == 404 and "error" in response.json()
    client = server.client()
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("column", [False, True], ids=["N", "Nx1"])
def test_infer_answers_each_key_with_the_models_own_prediction(
    server: V2Server, table: pd.DataFrame, binary: bool, column: bool
) -> None:
    keys = [f"cust-{i}" for i in range(len(table))]
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary)
        for n in ("key", "prediction", "probabilities")
    ]
    result = server.client().infer(
        server.name,
        inputs_of(table, keys, binary=binary, column=column),
        outputs=outputs,
        request_id="req-17",
    )
    answer = result.get_response()
    assert answer["id"] == "req-17"
    assert answer["model_name"] == server.name and answer["model_version"] == server.version
    got_keys = [k.decode() if isinstance(k, bytes) else k for k in result.as_numpy("key").tolist()]
    assert got_keys == keys
    predictions = [
        p.decode() if isinstance(p, bytes) else p for p in result.as_numpy("prediction").tolist()
    ]
    assert predictions == own_predictions(server.tag, table)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(table), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    predicted_class = np.array(["no", "yes"])[probabilities.argmax(axis=1)]
    assert predicted_class.tolist() == predictions


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_are_answered(
    server: V2Server, table: pd.DataFrame, algorithm: str
) -> None:
    """tritonclient's request_compression_algorithm got a 400 about the header length: the
    body was read compressed (issue 19 item 5)."""
    rows = table.head(300)
    keys = [f"k{i}" for i in range(len(rows))]
    result = server.client().infer(
        server.name, inputs_of(rows, keys), request_compression_algorithm=algorithm
    )
    got = [k.decode() for k in result.as_numpy("key").tolist()]
    assert got == keys
    predictions = [p.decode() for p in result.as_numpy("prediction").tolist()]
    assert predictions == own_predictions(server.tag, rows)


def test_nan_means_missing_as_null_does_on_predict(server: V2Server, table: pd.DataFrame) -> None:
    rows = table.head(40).copy()
    rows.loc[rows.index[::3], "monthly_spend"] = np.nan
    rows.loc[rows.index[1::4], "region"] = None
    keys = list(range(40))
    result = server.client().infer(server.name, inputs_of(rows, keys))
    assert result.as_numpy("key").tolist() == keys  # INT64 keys come back as INT64
    predict = server.http.post("/predict", json={"instances": as_instances(rows, keys)}).json()
    by_predict = [p["prediction"] for p in predict["predictions"]]
    assert [p.decode() for p in result.as_numpy("prediction").tolist()] == by_predict
    rows_probabilities = [
        [p["probabilities"]["no"], p["probabilities"]["yes"]] for p in predict["predictions"]
    ]
    np.testing.assert_allclose(result.as_numpy("probabilities"), rows_probabilities)


def test_concurrent_requests_with_the_same_keys_each_get_their_own_rows(
    server: V2Server, table: pd.DataFrame
) -> None:
    expected = dict(zip(range(len(table)), own_predictions(server.tag, table), strict=True))

    def one(seed: int) -> bool:
        order = list(range(len(table)))
        random.Random(seed).shuffle(order)
        rows = table.iloc[order[:120]]
        keys = list(range(120))  # every request numbers its rows 0..119
        result = server.client().infer(server.name, inputs_of(rows, keys))
        got = [p.decode() for p in result.as_numpy("prediction").tolist()]
        return result.as_numpy("key").tolist() == keys and got == [expected[order[k]] for k in keys]

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(48)))


def test_per_instance_errors_come_back_as_the_error_output(
    server: V2Server, table: pd.DataFrame
) -> None:
    rows = table.head(5).copy()
    rows["tenure_months"] = rows["tenure_months"].astype(float)
    rows.iloc[2, rows.columns.get_loc("tenure_months")] = np.inf
    keys = [f"k{i}" for i in range(5)]
    result = server.client().infer(
        server.name, inputs_of(rows, keys), parameters={"errors": "per_instance"}
    )
    errors = [e.decode() for e in result.as_numpy("error").tolist()]
    assert [bool(e) for e in errors] == [False, False, True, False, False]
    assert errors[2].startswith("out_of_range") and "k2" in errors[2]
    assert result.get_response()["parameters"] == {"received": 5, "predicted": 4, "failed": 1}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_failed_instance_reads_back_as_nan_in_tritonclient(
    server: V2Server, table: pd.DataFrame, binary: bool
) -> None:
    """A JSON answer writes a failed instance's probabilities as Triton does, the bare token
    NaN (orjson wrote null, which the tensor-data grammar does not allow; issue 19 item 7)."""
    rows = table.head(6).copy()
    rows["tenure_months"] = rows["tenure_months"].astype(float)
    rows.iloc[[1, 4], rows.columns.get_loc("tenure_months")] = np.inf
    keys = [f"k{i}" for i in range(6)]
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary)
        for n in ("key", "prediction", "probabilities", "error")
    ]
    result = server.client().infer(
        server.name,
        inputs_of(rows, keys, binary=binary),
        outputs=outputs,
        parameters={"errors": "per_instance"},
    )
    failed = [bool(e) for e in result.as_numpy("error").tolist()]
    assert failed == [False, True, False, False, True, False]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float64 and probabilities.shape == (6, 2)
    assert np.isnan(probabilities[failed]).all()
    if not binary:  # tritonclient's own reading of the JSON: NaN, not None (null)
        written = {o["name"]: o for o in result.get_response()["outputs"]}["probabilities"]
        assert all(isinstance(value, float) for value in written["data"])
        assert sum(value != value for value in written["data"]) == 4
    good = [not f for f in failed]
    assert np.isfinite(probabilities[good]).all()
    predictions = [
        p.decode() if isinstance(p, bytes) else p for p in result.as_numpy("prediction").tolist()
    ]
    expected = own_predictions(server.tag, rows[good])
    assert [p for p, ok in zip(predictions, good, strict=True) if ok] == expected
    assert np.array(["no", "yes"])[probabilities[good].argmax(axis=1)].tolist() == expected


def test_refusals_are_400s_naming_the_input_or_key(server: V2Server, table: pd.DataFrame) -> None:
    client = server.client()
    rows = table.head(3)
    good = inputs_of(rows, ["a", "b", "c"])

    def refused(inputs: list[triton.InferInput], *said: str) -> None:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(server.name, inputs)
        assert caught.value.status() == "400", caught.value
        for text in said:
            assert text in caught.value.message(), caught.value.message()

    refused(good[1:], "'key'")
    refused([i for i in good if i.name() != "plan"], "missing", "plan")
    extra = triton.InferInput("color", [3], "BYTES")
    extra.set_data_from_numpy(np.array(["r", "g", "b"], dtype=object))
    refused([*good, extra], "unknown", "color")
    short = triton.InferInput("tenure_months", [2], "FP64")
    short.set_data_from_numpy(np.array([1.0, 2.0]))
    refused([short if i.name() == "tenure_months" else i for i in good], "tenure_months", "2")
    refused(inputs_of(rows, ["a", "b", "a"]), "'a'", "2 times")
    wrong_type = triton.InferInput("plan", [3], "FP64")
    wrong_type.set_data_from_numpy(np.array([1.0, 2.0, 3.0]))
    refused([wrong_type if i.name() == "plan" else i for i in good], "plan", "BYTES")


def test_binary_sizes_that_do_not_add_up_are_refused(server: V2Server) -> None:
    header = {
        "inputs": [
            {
                "name": "key",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 9},
            }
        ]
    }
    head = json.dumps(header).encode()
    for tail in (
        struct.pack("<I", 1) + b"a",
        struct.pack("<I", 1) + b"a" + b"extra-bytes",
        b"\xff" * 9,
    ):
        response = server.http.post(
            f"/v2/models/{server.name}/infer",
            content=head + tail,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        assert response.status_code == 400, response.text
        assert "key" in response.json()["error"] or "binary" in response.json()["error"]
    response = server.http.post(
        f"/v2/models/{server.name}/infer",
        content=head,
        headers={"Inference-Header-Content-Length": str(len(head) + 100)},
    )
    assert (
        response.status_code == 400
        and "Inference-Header-Content-Length" in response.json()["error"]
    )


def test_the_json_body_mlservers_clients_send_is_answered(
    server: V2Server, table: pd.DataFrame
) -> None:
    rows = table.head(6)
    keys = [f"m{i}" for i in range(6)]

    def column(name: str, values: list[Any], datatype: str, content_type: str) -> dict[str, Any]:
        return {
            "name": name,
            "datatype": datatype,
            "shape": [len(values), 1],
            "parameters": {"content_type": content_type},
            "data": values,
        }

    inputs = [column("key", keys, "BYTES", "str")]
    inputs += [
        column(n, [None if np.isnan(v) else v for v in rows[n]], "FP64", "np") for n in NUMBERS
    ]
    inputs += [
        column(n, [v if isinstance(v, str) else None for v in rows[n]], "BYTES", "str")
        for n in CATEGORIES
    ]
    body = {"parameters": {"content_type": "pd"}, "inputs": inputs}
    response = server.http.post(f"/v2/models/{server.name}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["key"]["data"] == keys
    assert outputs["prediction"]["data"] == own_predictions(server.tag, rows)
    assert json.loads(outputs["probabilities"]["parameters"]["classes"]) == ["no", "yes"]
    assert "error" not in outputs  # only in per-instance mode
