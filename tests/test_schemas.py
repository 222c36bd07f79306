from __future__ import annotations

import pytest
from pydantic import ValidationError

from keyed_serving.schemas import Instance, PredictionPublic


@pytest.mark.parametrize("key", ["c-001", "x" * 256, 0, -5, 2**63 - 1, -(2**63)])
def test_keys_are_kept_exactly_as_sent(key: object) -> None:
    parsed = Instance.model_validate({"key": key, "features": {}})
    assert parsed.key == key and type(parsed.key) is type(key)


@pytest.mark.parametrize(
    "key", ["", "x" * 257, True, 1.5, None, [1], {"a": 1}, 2**63, -(2**63) - 1, "\ud800"]
)
def test_unusable_keys_are_refused(key: object) -> None:
    with pytest.raises(ValidationError) as caught:
        Instance.model_validate({"key": key, "features": {}})
    assert caught.value.errors()[0]["type"] == "invalid_key"


def test_features_that_are_not_an_object_are_refused_naming_the_key() -> None:
    with pytest.raises(ValidationError) as caught:
        Instance.model_validate({"key": "k-9", "features": [1, 2]})
    message = caught.value.errors()[0]["msg"]
    assert "'k-9'" in message and "features" in message


def test_any_json_feature_value_passes_the_wire_schema_for_validate_to_judge() -> None:
    parsed = Instance.model_validate({"key": 1, "features": {"a": [1], "b": {"c": None}}})
    assert parsed.features == {"a": [1], "b": {"c": None}}


def test_unknown_instance_fields_are_refused_with_the_key() -> None:
    with pytest.raises(ValidationError) as caught:
        Instance.model_validate({"key": 3, "features": {}, "weight": 2})
    assert "3" in caught.value.errors()[0]["msg"] and "weight" in caught.value.errors()[0]["msg"]


def test_regression_predictions_carry_no_probabilities_field() -> None:
    assert PredictionPublic(key=1, prediction=2.5).model_dump() == {"key": 1, "prediction": 2.5}
    with_probs = PredictionPublic(key="a", prediction="x", probabilities={"x": 1.0})
    assert with_probs.model_dump()["probabilities"] == {"x": 1.0}
