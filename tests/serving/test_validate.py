from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from keyed_serving.model.spec import ModelSpec
from keyed_serving.schemas import FeatureInfo, Score
from keyed_serving.serving.validate import InvalidRequest, ValidBatch, rejection, validate_request

SPEC = ModelSpec(
    tag="m:1",
    task="classification",
    target="y",
    features=(FeatureInfo(name="age", type="number"), FeatureInfo(name="plan", type="category")),
    classes=("no", "yes"),
    holdout_score=Score(metric="accuracy", value=0.9),
)


def instance(key: object, **features: object) -> dict[str, Any]:
    return {"key": key, "features": features}


def rows(*instances: dict[str, Any], **body: Any) -> ValidBatch:
    return validate_request({"instances": list(instances), **body}, SPEC, 100)


def refused(body: Any, max_instances: int = 100) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(body, SPEC, max_instances)
    return caught.value


def test_valid_instances_become_columns_in_the_models_feature_order() -> None:
    batch = rows(instance("a", plan="pro", age=31), instance(7, age=None, plan=None))
    assert batch.failures == [] and batch.keys == ["a", 7] and batch.positions is None
    age, plan = batch.columns
    assert age.dtype == np.float64 and age[0] == 31 and np.isnan(age[1])
    assert plan.tolist() == ["pro", None]


def test_columns_and_rows_give_the_same_batch() -> None:
    by_rows = rows(instance("a", plan="pro", age=31), instance(7, age=None, plan="x"))
    by_columns = validate_request(
        {"keys": ["a", 7], "columns": {"plan": ["pro", "x"], "age": [31, None]}}, SPEC, 100
    )
    assert by_columns.shape == "columns" and by_rows.shape == "rows"
    assert by_columns.keys == by_rows.keys
    for a, b in zip(by_columns.columns, by_rows.columns, strict=True):
        assert a.tolist() == b.tolist() or np.allclose(a, b, equal_nan=True)


def test_duplicate_keys_are_rejected_by_name() -> None:
    error = refused(
        {
            "instances": [
                instance("c-1", age=1, plan="a"),
                instance("c-2", age=1, plan="a"),
                instance("c-1", age=2, plan="b"),
            ]
        }
    )
    [detail] = error.details
    assert (detail.type, detail.key, detail.field) == ("duplicate_key", "c-1", "key")
    assert "'c-1'" in detail.msg and "2 times" in detail.msg


def test_integer_and_string_keys_that_look_alike_are_different_keys() -> None:
    batch = rows(instance(1, age=1, plan="a"), instance("1", age=1, plan="a"))
    assert batch.keys == [1, "1"]


@pytest.mark.parametrize("key", [True, 1.5, None, "", "k" * 257, [1], {"id": 1}])
def test_unusable_keys_are_refused_where_they_are(key: Any) -> None:
    error = refused({"instances": [instance("ok", age=1, plan="a"), instance(key, age=1)]})
    assert error.details[0].type == "invalid_key"
    assert error.details[0].loc == ["instances", 1, "key"]
    columnar = refused({"keys": ["ok", key], "columns": {"age": [1, 2], "plan": ["a", "b"]}})
    assert columnar.details[0].loc == ["keys", 1]


@pytest.mark.parametrize(
    ("features", "kind", "field"),
    [
        ({"plan": "a"}, "missing_feature", "age"),
        ({"age": 1, "plan": "a", "colour": "red"}, "unknown_feature", "colour"),
        ({"age": "31", "plan": "a"}, "wrong_type", "age"),
        ({"age": True, "plan": "a"}, "wrong_type", "age"),
        ({"age": [1, 2], "plan": "a"}, "wrong_type", "age"),
        ({"age": 1, "plan": 3}, "wrong_type", "plan"),
        ({"age": 1, "plan": {"tier": 1}}, "wrong_type", "plan"),
        ({"age": float("nan"), "plan": "a"}, "out_of_range", "age"),
        ({"age": float("inf"), "plan": "a"}, "out_of_range", "age"),
        ({"age": 1e308, "plan": "a"}, "out_of_range", "age"),
        ({"age": -(10**400), "plan": "a"}, "out_of_range", "age"),
    ],
)
def test_each_bad_feature_is_that_instances_failure_named_with_its_key(
    features: dict, kind: str, field: str
) -> None:
    batch = rows(instance("ok", age=1, plan="a"), instance("bad-one", **features))
    assert batch.keys == ["ok"] and batch.positions == [0]
    [failure] = batch.failures
    assert (failure.index, failure.key) == (1, "bad-one")
    [detail] = failure.details
    assert (detail.type, detail.key, detail.field) == (kind, "bad-one", field)
    assert detail.loc == ["instances", 1, "features", field]
    assert "'bad-one'" in detail.msg and repr(field) in detail.msg


def test_a_bad_value_in_a_column_is_its_keys_failure() -> None:
    batch = validate_request(
        {"keys": ["a", "b", "c"], "columns": {"age": [1, "x", 3], "plan": ["p", "q", None]}},
        SPEC,
        100,
    )
    assert batch.keys == ["a", "c"] and batch.positions == [0, 2]
    [failure] = batch.failures
    assert (failure.key, failure.details[0].type) == ("b", "wrong_type")
    assert failure.details[0].loc == ["columns", "age", 1]
    assert batch.columns[0].tolist() == [1.0, 3.0]


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        ({"age": [1, 2]}, "missing_feature"),
        ({"age": [1, 2], "plan": ["a", "b"], "colour": [1, 2]}, "unknown_feature"),
        ({"age": [1], "plan": ["a", "b"]}, "wrong_length"),
        ({"age": 1, "plan": ["a", "b"]}, "wrong_length"),
    ],
)
def test_a_column_that_does_not_fit_the_model_rejects_the_request(columns: dict, kind: str) -> None:
    error = refused({"keys": ["a", "b"], "columns": columns})
    assert error.details[0].type == kind


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"rows": []},
        {"instances": [{"features": {}}]},
        {"instances": [{"key": "a", "features": {}, "extra": 1}]},
        {"instances": [{"key": "a", "features": [1, 2]}]},
        {"instances": "many"},
        {"instances": [], "keys": []},
        {"keys": ["a"]},
        {"instances": [instance("a", age=1, plan="a")], "errors": "ignore"},
    ],
)
def test_malformed_bodies_are_refused(body: Any) -> None:
    assert refused(body).details


def test_a_malformed_instance_is_named_by_its_key_when_it_has_one() -> None:
    error = refused({"instances": [{"key": "k-9", "features": {}, "colour": 1}]})
    assert error.details[0].key == "k-9" and "'k-9'" in error.details[0].msg


def test_large_but_finite_numbers_the_model_can_take_are_accepted() -> None:
    batch = rows(instance(1, age=3e38, plan="a"))
    assert batch.failures == [] and batch.columns[0].tolist() == [3e38]


def test_a_rejection_reports_every_problem_of_the_request_at_once() -> None:
    batch = rows(instance("x", plan="a"), instance("y", age="old", plan=5))
    error = rejection(batch.failures)
    assert sorted((d.key, d.field) for d in error.details) == [
        ("x", "age"),
        ("y", "age"),
        ("y", "plan"),
    ]


def test_empty_and_oversized_requests_are_refused() -> None:
    assert refused({"instances": []}).details[0].type == "empty_instances"
    many = [instance(i, age=i, plan="a") for i in range(4)]
    error = refused({"instances": many}, max_instances=3)
    assert error.details[0].type == "too_many_instances"
    assert "at most 3" in error.details[0].msg
