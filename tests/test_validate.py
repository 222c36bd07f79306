from __future__ import annotations

import pytest

from keyed_serving.model import ModelSpec
from keyed_serving.schemas import FeatureInfo, Instance, Score
from keyed_serving.validate import (
    InvalidRequest,
    check_request,
    rejection,
    validate_instances,
)

SPEC = ModelSpec(
    tag="m:1",
    task="classification",
    target="y",
    features=(FeatureInfo(name="age", type="number"), FeatureInfo(name="plan", type="category")),
    classes=("no", "yes"),
    holdout_score=Score(metric="accuracy", value=0.9),
)


def instance(key: object, **features: object) -> Instance:
    return Instance.model_validate({"key": key, "features": features})


def refused(instances: list[Instance], max_instances: int = 100) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_request(instances, max_instances)
    return caught.value


def test_valid_instances_become_rows_in_the_models_feature_order() -> None:
    rows, failures = validate_instances(
        [instance("a", plan="pro", age=31), instance(7, age=None, plan=None)], SPEC
    )
    assert failures == []
    assert [(row.index, row.key, row.values) for row in rows] == [
        (0, "a", [31, "pro"]),
        (1, 7, [None, None]),
    ]


def test_duplicate_keys_are_rejected_by_name() -> None:
    error = refused(
        [
            instance("c-1", age=1, plan="a"),
            instance("c-2", age=1, plan="a"),
            instance("c-1", age=2, plan="b"),
        ]
    )
    [detail] = error.details
    assert (detail.type, detail.key, detail.field) == ("duplicate_key", "c-1", "key")
    assert "'c-1'" in detail.msg and "2 times" in detail.msg


def test_integer_and_string_keys_that_look_alike_are_different_keys() -> None:
    check_request([instance(1, age=1, plan="a"), instance("1", age=1, plan="a")], 100)


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
    rows, failures = validate_instances(
        [instance("ok", age=1, plan="a"), instance("bad-one", **features)], SPEC
    )
    assert [row.key for row in rows] == ["ok"]
    [failure] = failures
    assert (failure.index, failure.key) == (1, "bad-one")
    [detail] = failure.details
    assert (detail.type, detail.key, detail.field) == (kind, "bad-one", field)
    assert detail.loc == ["instances", 1, "features", field]
    assert "'bad-one'" in detail.msg and repr(field) in detail.msg


def test_large_but_finite_numbers_the_model_can_take_are_accepted() -> None:
    rows, failures = validate_instances([instance(1, age=3e38, plan="a")], SPEC)
    assert failures == [] and rows[0].values == [3e38, "a"]


def test_a_rejection_reports_every_problem_of_the_request_at_once() -> None:
    _, failures = validate_instances(
        [instance("x", plan="a"), instance("y", age="old", plan=5)], SPEC
    )
    error = rejection(failures)
    assert sorted((d.key, d.field) for d in error.details) == [
        ("x", "age"),
        ("y", "age"),
        ("y", "plan"),
    ]


def test_empty_and_oversized_requests_are_refused() -> None:
    assert refused([]).details[0].type == "empty_instances"
    many = [instance(i, age=i, plan="a") for i in range(4)]
    error = refused(many, max_instances=3)
    assert error.details[0].type == "too_many_instances"
    assert "at most 3" in error.details[0].msg
