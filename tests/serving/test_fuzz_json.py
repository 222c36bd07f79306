"""Random JSON documents and random bytes, as a fuzzer sends them, at /predict and at the
V2 inference route: each gets a 4xx naming the problem or a 200, never a 5xx (through
BentoML's own ASGI app, in-process)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
# Names the server looks for, so that random documents reach past the first checks.
NAMES = st.sampled_from(
    [
        "instances", "keys", "columns", "key", "features", "errors", "per_instance",
        "reject", "inputs", "outputs", "name", "datatype", "shape", "data", "parameters",
        "binary_data_size", "binary_data_output", "binary_data", "id", "BYTES", "INT64",
        "FP64", "FP32", "BOOL", "INT32", "UINT64", *FEATURES,
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | NAMES
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(NAMES | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=40,
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(response: Any, sent: Any) -> None:
    assert response.status_code < 500, (sent, response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["error"], (sent, response.text[:300])


@FUZZ
@given(document=DOCUMENTS)
def test_no_random_json_document_at_predict_gets_a_5xx(
    asgi_client: TestClient, document: Any
) -> None:
    body = json.dumps(document).encode()
    response = asgi_client.post(
        "/predict", content=body, headers={"content-type": "application/json"}
    )
    check(response, document)


@FUZZ
@given(document=DOCUMENTS)
def test_no_random_json_document_at_v2_infer_gets_a_5xx(
    asgi_client: TestClient, document: Any
) -> None:
    body = json.dumps(document).encode()
    response = asgi_client.post("/v2/models/iris_classifier/infer", content=body)
    check(response, document)


@FUZZ
@given(
    tensors=st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["key", *FEATURES, "other"]),
                "datatype": st.sampled_from(["BYTES", "INT64", "FP64", "FP32", "BOOL", "x"]),
                "shape": st.lists(st.integers(-2, 4), max_size=3),
                "data": st.lists(SCALARS, max_size=4) | SCALARS,
            }
        ),
        max_size=7,
    ),
    parameters=st.dictionaries(st.sampled_from(["errors", "binary_data_output"]), SCALARS),
)
def test_no_random_v2_tensors_get_a_5xx(
    asgi_client: TestClient, tensors: list[dict[str, Any]], parameters: dict[str, Any]
) -> None:
    document = {"inputs": tensors, "parameters": parameters}
    response = asgi_client.post("/v2/models/iris_classifier/infer", json=document)
    check(response, document)


@FUZZ
@given(body=st.binary(max_size=200))
def test_no_random_bytes_get_a_5xx(asgi_client: TestClient, body: bytes) -> None:
    for path in ("/predict", "/v2/models/iris_classifier/infer"):
        response = asgi_client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        check(response, body)
