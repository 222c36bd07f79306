"""The V2 documents as the protocol types them (issue 19, items 2 and 7): every parameter is
a string, number or boolean and model facts are the metadata's string ``properties``; a
number that is not (a failed instance's NaN) is written as Triton's JSON writer writes it.
In-process, through BentoML's own ASGI app."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
import rapidjson  # tritonclient.http's JSON reader
from starlette.testclient import TestClient
from support import _stored_pipeline

from keyed_serving.model.spec import ModelSpec
from keyed_serving.schemas import FeatureInfo, InstanceError
from keyed_serving.serving import v2
from keyed_serving.serving.answers import v2_answer
from keyed_serving.serving.reassemble import Scored
from keyed_serving.serving.validate import validate_request

MODEL = "iris_classifier"
FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
# Instances 1 and 3 fail validation (out of range), the others are predicted.
VALUES = [5.1, 1e300, 6.3, 1e300, 4.9]
SCALARS = (str, int, float, bool)
REGRESSOR = ModelSpec(
    tag="prices:v1",
    task="regression",
    target="price",
    features=(FeatureInfo(name="area", type="number"),),
    classes=None,
    holdout_score=None,
)


def infer_body(per_instance: bool, binary: bool, **extra: Any) -> dict[str, Any]:
    n = len(VALUES)
    keys = [f"k{i}" for i in range(n)]
    inputs = [{"name": "key", "datatype": "BYTES", "shape": [n], "data": keys}]
    inputs += [{"name": f, "datatype": "FP64", "shape": [n], "data": VALUES} for f in FEATURES]
    parameters: dict[str, Any] = {"binary_data_output": binary}
    if per_instance:
        parameters["errors"] = "per_instance"
    return {"inputs": inputs, "parameters": parameters, **extra}


def json_header(response: Any) -> bytes:
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    return bytes(response.content[:length])


def model_classes(tag: str) -> list[str]:
    """The fitted pipeline's own classes, in its order (not the server's word for them)."""
    _, pipeline = _stored_pipeline(tag)
    return [str(label) for label in pipeline.classes_]


def test_model_facts_are_string_properties_and_no_parameter_is_a_list(
    asgi_client: TestClient, default_model: str
) -> None:
    response = asgi_client.get(f"/v2/models/{MODEL}")
    assert response.status_code == 200, response.text
    metadata = response.json()
    properties = metadata["properties"]
    assert properties and all(isinstance(value, str) for value in properties.values())
    for value in metadata.get("parameters", {}).values():
        assert isinstance(value, SCALARS), metadata["parameters"]
    assert json.loads(properties["classes"]) == model_classes(default_model)
    assert properties["task"] == "classification" and properties["key_input"] == "key"
    assert "INT64" in json.loads(properties["key_datatypes"])
    assert json.loads(properties["errors"]) == ["reject", "per_instance"]
    for tensor in metadata["inputs"] + metadata["outputs"]:
        assert set(tensor) == {"name", "datatype", "shape"}


def test_a_regressor_has_no_classes_property() -> None:
    properties = v2.model_properties(REGRESSOR)
    assert "classes" not in properties
    assert properties == v2.model_metadata(REGRESSOR)["properties"]
    assert all(isinstance(value, str) for value in properties.values())


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("per_instance", [False, True], ids=["reject", "per_instance"])
def test_every_parameter_of_an_infer_answer_is_a_string_number_or_boolean(
    asgi_client: TestClient, default_model: str, binary: bool, per_instance: bool
) -> None:
    body = infer_body(per_instance, binary)
    if not per_instance:  # all-or-nothing: only good instances, or it is a 400
        for tensor in body["inputs"][1:]:
            tensor["data"] = [5.1] * len(VALUES)
    response = asgi_client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = json.loads(json_header(response))
    assert answer["outputs"]
    for parameters in [answer["parameters"], *(o.get("parameters", {}) for o in answer["outputs"])]:
        for name, value in parameters.items():
            assert isinstance(value, SCALARS), (name, value)
    outputs = {o["name"]: o for o in answer["outputs"]}
    classes = outputs["probabilities"]["parameters"]["classes"]
    assert json.loads(classes) == model_classes(default_model)


def test_a_failed_instances_probabilities_are_written_as_tritons_nan(
    asgi_client: TestClient,
) -> None:
    response = asgi_client.post(f"/v2/models/{MODEL}/infer", json=infer_body(True, False))
    assert response.status_code == 200, response.text
    assert b"null" not in response.content  # the tensor-data grammar has no null
    outputs = {o["name"]: o for o in rapidjson.loads(response.content)["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"], dtype=float).reshape(5, 3)
    failed = [bool(error) for error in outputs["error"]["data"]]
    assert failed == [False, True, False, True, False]
    assert np.isnan(probabilities[failed]).all()
    assert np.isfinite(probabilities[[not f for f in failed]]).all()
    # Triton's writer (rapidjson, kWriteNanAndInfFlag) writes the bare token NaN.
    data = json.dumps(outputs["probabilities"]["data"], separators=(",", ":"))
    assert data.count("NaN") == 6 and data in response.text


def test_an_answer_without_nan_is_written_by_orjson_as_before(asgi_client: TestClient) -> None:
    body = infer_body(True, False)
    for tensor in body["inputs"][1:]:
        tensor["data"] = [5.1, 6.3, 4.9, 7.0, 5.5]
    response = asgi_client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    assert orjson.dumps(orjson.loads(response.content)) == response.content


def regressor_answer(predictions: list[float | None]) -> bytes:
    """A regressor's V2 JSON answer for these predictions (None: the model failed the row)."""
    n = len(predictions)
    body = {
        "inputs": [
            {"name": "key", "datatype": "INT64", "shape": [n], "data": list(range(n))},
            {"name": "area", "datatype": "FP64", "shape": [n], "data": [50.0] * n},
        ],
        "parameters": {"errors": "per_instance"},
    }
    request = v2.decode_infer_request(orjson.dumps(body), None, REGRESSOR, 100)
    batch = validate_request(request.body, REGRESSOR, 100)
    errors = {
        row: InstanceError(code="model_error", message="the model raised")
        for row, prediction in enumerate(predictions)
        if prediction is None
    }
    return v2_answer(request, batch, Scored(list(predictions), None, errors), REGRESSOR).body


def test_a_regressors_failed_prediction_is_nan_and_infinities_are_written_as_triton_does() -> None:
    body = regressor_answer([1.5, None, math.inf, -math.inf, 0.1])
    outputs = {o["name"]: o for o in rapidjson.loads(body)["outputs"]}
    prediction = outputs["prediction"]
    assert prediction["datatype"] == "FP64"
    assert b'"data":[1.5,NaN,Infinity,-Infinity,0.1]' in body
    written = rapidjson.dumps(prediction["data"], number_mode=rapidjson.NM_NAN)
    assert written == "[1.5,NaN,Infinity,-Infinity,0.1]"  # what Triton's writer writes
    without_nan = regressor_answer([1.5, 0.1])
    assert without_nan == orjson.dumps(orjson.loads(without_nan))
