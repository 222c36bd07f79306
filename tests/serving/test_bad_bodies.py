"""Bodies a careless writer or a fuzzer sends: every one gets a 4xx that names what is
wrong, never a 5xx (through BentoML's own ASGI app, in-process)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

GOOD = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
ROWS = json.dumps(
    {
        "instances": [
            {"key": "c-1", "features": GOOD},
            {"key": 42, "features": {**GOOD, "petal_width_cm": None}},
        ],
        "errors": "per_instance",
    }
)
COLUMNS = json.dumps({"keys": ["a", 7], "columns": {k: [v, None] for k, v in GOOD.items()}})
# Python's JSON writer emits NaN: such a body takes the lenient reader's path.
ROWS_WITH_NAN = ROWS.replace("5.1", "NaN", 1)


@pytest.fixture
def client(asgi_client: TestClient) -> TestClient:
    return asgi_client


def post_raw(client: TestClient, body: str | bytes) -> Any:
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return client.post("/predict", content=raw, headers={"content-type": "application/json"})


def refusal(response: Any) -> tuple[set[str], str]:
    assert response.status_code == 400, response.text
    answer = response.json()
    return {d["type"] for d in answer["detail"]}, json.dumps(answer)


@pytest.mark.parametrize("body", [ROWS, COLUMNS, ROWS_WITH_NAN])
def test_a_lone_surrogate_key_is_refused_with_400(client: TestClient, body: str) -> None:
    bad = body.replace('"c-1"', '"\\ud800"').replace('"a"', '"\\ud800"')
    kinds, text = refusal(post_raw(client, bad))
    assert kinds == {"json_invalid"} and "surrogate" in text


@pytest.mark.parametrize("where", ["feature name", "category value"])
def test_a_lone_surrogate_anywhere_in_a_lenient_body_is_refused(
    client: TestClient, where: str
) -> None:
    bad = (
        ROWS_WITH_NAN.replace("sepal_width_cm", "sepal_\\udc00width_cm", 1)
        if where == "feature name"
        else ROWS_WITH_NAN.replace("3.5", '"\\ud83d"', 1)
    )
    kinds, text = refusal(post_raw(client, bad))
    assert kinds == {"json_invalid"} and "surrogate" in text


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("key", [2**64, 2**63, 10**30, -(2**63) - 1])
def test_an_integer_key_beyond_int64_is_refused_with_advice(
    client: TestClient, key: int, with_nan: bool
) -> None:
    body = (ROWS_WITH_NAN if with_nan else ROWS).replace("42", str(key))
    kinds, text = refusal(post_raw(client, body))
    assert kinds == {"invalid_key"}
    assert "as strings" in text and "2^63" in text and "e+" not in text


def test_the_largest_integer_keys_are_answered_exactly(client: TestClient) -> None:
    keys = [2**63 - 1, -(2**63)]
    body = {"keys": keys, "columns": {k: [v, v] for k, v in GOOD.items()}}
    response = post_raw(client, json.dumps(body))
    assert response.status_code == 200, response.text
    assert response.json()["keys"] == keys


@pytest.mark.parametrize("depth", [1000, 1030, 100_000])
@pytest.mark.parametrize("where", ["body", "features", "value"])
def test_deeply_nested_arrays_are_refused_with_400(
    client: TestClient, depth: int, where: str
) -> None:
    nested = "[" * depth + "]" * depth
    rejecting = ROWS.replace(', "errors": "per_instance"', "")
    if where == "body":
        body = nested
    elif where == "features":
        body = rejecting.replace(json.dumps(GOOD), nested, 1)
    else:
        body = rejecting.replace("3.5", nested, 1)
    for lenient in (False, True):
        sent = body.replace("5.1", "NaN", 1) if lenient else body
        response = post_raw(client, sent)
        assert response.status_code == 400, (depth, where, lenient, response.text[:300])
        assert response.json()["detail"], response.text[:300]


def fuzzed(examples: int) -> Any:
    """A fixed set of examples (the same every run), through the session's app fixture."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


MUTATIONS = st.sampled_from(
    [
        *'{}[]":,.-+eE019 \\/nNItfu\x00\u00e9',
        "\\ud800",
        "\\udc00",
        "NaN",
        "-Infinity",
        "1e999",
        "18446744073709551616",
        "[[[",
        "",
    ]
)


@fuzzed(600)
@given(
    base=st.sampled_from([ROWS, COLUMNS, ROWS_WITH_NAN]),
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    insert=st.booleans(),
    text=MUTATIONS,
)
def test_no_mutation_of_a_valid_body_gets_a_5xx(
    client: TestClient, base: str, position: float, insert: bool, text: str
) -> None:
    at = int(position * len(base))
    body = base[:at] + text + base[at if insert else at + 1 :]
    response = post_raw(client, body)
    assert response.status_code < 500, (body, response.text[:300])
    if response.status_code != 200:
        assert response.json()["error"]


def v2_binary_body() -> tuple[bytes, int]:
    """A valid V2 request with binary tensors (as tritonclient sends it) and its header's
    length."""
    import struct

    import numpy as np

    keys = [b"c-1", b"c-2"]
    tensors = [("key", "BYTES", b"".join(struct.pack("<I", len(k)) + k for k in keys))]
    tensors += [(name, "FP64", np.array([v, v], dtype="<f8").tobytes()) for name, v in GOOD.items()]
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": [2], "parameters": {"binary_data_size": len(raw)}}
            for n, d, raw in tensors
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    return head + b"".join(raw for _, _, raw in tensors), len(head)


def post_v2(client: TestClient, body: bytes, header_length: int | str | None) -> Any:
    headers = (
        {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    )
    return client.post("/v2/models/iris_classifier/infer", content=body, headers=headers)


def test_the_v2_binary_body_is_answered(client: TestClient) -> None:
    body, length = v2_binary_body()
    response = post_v2(client, body, length)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert int(response.headers["inference-header-content-length"]) < len(response.content)


@fuzzed(400)
@given(
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    replacement=st.binary(min_size=0, max_size=4),
    header_shift=st.sampled_from([0, 0, 0, -1, 1, -7, 10_000, None]),
)
def test_no_mutation_of_a_v2_binary_body_gets_a_5xx(
    client: TestClient, position: float, replacement: bytes, header_shift: int | None
) -> None:
    body, length = v2_binary_body()
    at = int(position * len(body))
    mutated = body[:at] + replacement + body[at + 1 :]
    header = None if header_shift is None else length + header_shift
    response = post_v2(client, mutated, header)
    assert response.status_code < 500, (mutated, header, response.text[:300])
    if response.status_code != 200:
        assert response.json()["error"]


def v2_json_body(values: list[float], **extra: Any) -> dict[str, Any]:
    """A JSON V2 request with integer keys, every feature set to ``values``."""
    n = len(values)
    inputs = [{"name": "key", "datatype": "INT64", "shape": [n], "data": list(range(n))}]
    inputs += [{"name": f, "datatype": "FP64", "shape": [n], "data": values} for f in GOOD]
    return {"inputs": inputs, **extra}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("named_outputs", [False, True])
def test_a_v2_request_whose_every_instance_is_bad_is_answered_per_instance(
    client: TestClient, binary: bool, named_outputs: bool
) -> None:
    names = ("key", "prediction", "probabilities", "error")
    body = v2_json_body(
        [1e300, 1e300],
        parameters={"errors": "per_instance", "binary_data_output": binary},
        **({"outputs": [{"name": n} for n in names]} if named_outputs else {}),
    )
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 200, response.text
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    answer = json.loads(response.content[:length])
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"key", "prediction", "probabilities", "error"}
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert answer["parameters"] == {"received": 2, "predicted": 0, "failed": 2}
    if not binary:
        assert all(p is None or p != p for p in outputs["probabilities"]["data"])
        assert all(e.startswith("out_of_range") for e in outputs["error"]["data"])


def test_asking_for_the_error_output_without_per_instance_errors_is_a_400(
    client: TestClient,
) -> None:
    body = v2_json_body([1.0], outputs=[{"name": "key"}, {"name": "error"}])
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 400, response.text
    assert "error" in response.json()["error"]
    assert "per_instance" in response.json()["error"]


def test_columns_whose_every_key_is_bad_still_answer_a_probability_column_per_class(
    client: TestClient,
) -> None:
    body = {
        "keys": ["a", 7],
        "columns": {k: [1e300, 1e300] for k in GOOD},
        "errors": "per_instance",
    }
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["predictions"] == [None, None]
    assert answer["probabilities"] == {
        c: [None, None] for c in ("setosa", "versicolor", "virginica")
    }


@pytest.mark.parametrize("digits", [310, 400, 4000])
@pytest.mark.parametrize("route", ["/predict", "/v2/models/iris_classifier/infer"])
def test_an_integer_beyond_any_float_is_refused_with_400(
    client: TestClient, digits: int, route: str
) -> None:
    huge = "9" * digits
    if route == "/predict":
        body = ROWS.replace("5.1", huge, 1)
    else:
        body = json.dumps(v2_json_body([1.0])).replace("1.0", huge, 1)
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "infinity" in response.json()["error"] or "JSON" in response.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "keys"),
    [
        ("INT64", [1, "1"]),  # "1" would come back as 1 in a binary INT64 answer
        ("INT64", [1, "abc"]),
        ("INT64", [1, None]),
        ("INT32", [1, 2**40]),
        ("UINT8", [1, 300]),
        ("INT16", [1, -40000]),
    ],
)
@pytest.mark.parametrize("binary_output", [False, True])
def test_integer_keys_that_are_not_integers_of_their_datatype_are_a_400(
    client: TestClient, datatype: str, keys: list[Any], binary_output: bool
) -> None:
    body = v2_json_body([1.0, 1.0], parameters={"binary_data_output": binary_output})
    body["inputs"][0] = {"name": "key", "datatype": datatype, "shape": [2], "data": keys}
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 400, response.text
    assert "'key'" in response.json()["error"]
    assert datatype in response.json()["error"]


@pytest.mark.parametrize("binary", [False, True])
def test_a_v2_request_of_zero_instances_is_a_400_saying_so_once(
    client: TestClient, binary: bool
) -> None:
    body = v2_json_body([], parameters={"binary_data_output": binary})
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "send at least one instance"


@pytest.mark.parametrize("datatype", [["BYTES"], {"BYTES": 1}, None, 7])
@pytest.mark.parametrize("which", [0, 1])  # the key input, a feature input
def test_a_datatype_that_is_not_a_string_is_a_400_naming_the_input(
    client: TestClient, datatype: Any, which: int
) -> None:
    """A list as a datatype raised TypeError (unhashable) in the reader: a 500 (issue 19,
    item 1)."""
    body = v2_json_body([1.0, 1.0])
    body["inputs"][which]["datatype"] = datatype
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 400, response.text
    assert repr(body["inputs"][which]["name"]) in response.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("INT32", 2.6),
        ("INT32", True),
        ("UINT8", -1),
        ("UINT8", 300),
        ("INT8", -1000),
        ("INT64", 2**64),
        ("FP32", 1e39),
        ("FP16", 70000.0),
        ("FP64", "5.1"),
    ],
)
def test_a_json_element_that_does_not_fit_its_datatype_is_a_400_naming_the_input(
    client: TestClient, datatype: str, value: Any
) -> None:
    """An INT32 2.6 was used as 2.6 and a UINT8 300 as 300: the same request answered
    otherwise in JSON than in binary, where each element is of its datatype (issue 19 item
    6)."""
    body = v2_json_body([1.0, 1.0])
    body["inputs"][1] = {**body["inputs"][1], "datatype": datatype, "data": [1, value]}
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert repr(body["inputs"][1]["name"]) in error and datatype in error


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "INT32", "UINT8"])
def test_a_request_answers_the_same_in_json_and_in_binary(
    client: TestClient, datatype: str
) -> None:
    """tritonclient's own request bodies, JSON and binary, of the same values: an FP32 0.1
    is the float32 nearest 0.1 either way."""
    import numpy as np
    import tritonclient.http as triton

    values = np.array([5.1, 0.1, 3.3, 1.7] if "FP" in datatype else [5, 0, 3, 1])
    answers = []
    for binary in (False, True):
        inputs = [triton.InferInput("key", [4], "INT64")]
        inputs[0].set_data_from_numpy(np.arange(4, dtype=np.int64), binary_data=binary)
        for name in GOOD:
            tensor = triton.InferInput(name, [4], datatype)
            tensor.set_data_from_numpy(
                values.astype(triton.triton_to_np_dtype(datatype)), binary_data=binary
            )
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
        body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs)
        headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
        response = client.post("/v2/models/iris_classifier/infer", content=body, headers=headers)
        assert response.status_code == 200, response.text
        answers.append(response.json()["outputs"][0]["data"])
    assert answers[0] == answers[1]


def v2_refusal(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/v2/models/iris_classifier/infer", json=body)
    assert response.status_code == 400, response.text
    return str(response.json()["error"])


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_a_binary_data_flag_that_is_not_a_boolean_is_a_400(client: TestClient, value: Any) -> None:
    """ "binary_data_output": "false" (a string) gave a binary answer (issue 19 item 9)."""
    error = v2_refusal(client, v2_json_body([1.0], parameters={"binary_data_output": value}))
    assert "binary_data_output" in error and "true or false" in error
    body = v2_json_body(
        [1.0], outputs=[{"name": "prediction", "parameters": {"binary_data": value}}]
    )
    error = v2_refusal(client, body)
    assert "binary_data" in error and "true or false" in error


def test_an_output_requested_twice_is_a_400(client: TestClient) -> None:
    body = v2_json_body([1.0], outputs=[{"name": "prediction"}, {"name": "prediction"}])
    assert "'prediction' is requested twice" in v2_refusal(client, body)


def test_data_beside_binary_data_size_is_a_400(client: TestClient) -> None:
    """The binary bytes were used and the data silently dropped."""
    body = v2_json_body([1.0])
    body["inputs"][1]["parameters"] = {"binary_data_size": 8}
    error = v2_refusal(client, body)
    assert repr(body["inputs"][1]["name"]) in error and "both" in error


def test_many_unknown_inputs_are_named_a_few_and_counted(client: TestClient) -> None:
    """20k unknown inputs made a 189 KB error message."""
    body = v2_json_body([1.0])
    body["inputs"] += [
        {"name": f"extra_{i}", "datatype": "FP64", "shape": [1], "data": [1.0]}
        for i in range(20_000)
    ]
    error = v2_refusal(client, body)
    assert "20000 unknown input(s)" in error and "extra_0" in error
    assert len(error) < 1000


def test_tritons_classification_output_parameter_is_refused_not_ignored(
    client: TestClient,
) -> None:
    """tritonclient's class_count asks for Triton's top-k classification output: it was
    ignored and the plain output sent."""
    body = v2_json_body(
        [1.0], outputs=[{"name": "probabilities", "parameters": {"classification": 2}}]
    )
    error = v2_refusal(client, body)
    assert "classification" in error and "probabilities" in error
