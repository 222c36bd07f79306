"""The V2 documents as the protocol types them (issue 19, items 2 and 7): every parameter is
a string, number or boolean and model facts are the metadata's string ``properties``; a
number that is not (a failed instance's NaN) is written as Triton's JSON writer writes it.
In-process, through BentoML's own ASGI app."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient
from support import _stored_pipeline

from keyed_serving.model.spec import ModelSpec
from keyed_serving.schemas import FeatureInfo
from keyed_serving.serving import v2

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
