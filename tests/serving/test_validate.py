from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import byte_edits, edited

from keyed_serving.keys import KeyColumn
from keyed_serving.model.spec import ModelSpec
from keyed_serving.schemas import FeatureInfo, Score
from keyed_serving.serving.validate import (
    InvalidRequest,
    ValidBatch,
    decode_body,
    decode_predict_body,
    rejection,
    validate_request,
)

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


# /predict's reader cuts the keys of a columnar body that sends them first out of its text
# (decode_predict_body); whatever the body, what it reads must be what orjson reads.
_KEYS = [f"k{i}" for i in range(250)]
_COLUMNS = {"age": list(range(250)), "plan": ["a", None] * 125}


def _read_alike(body: bytes) -> Any:
    """What decode_predict_body reads, checked against decode_body (orjson): the same
    document, or the same refusal."""
    try:
        whole = decode_body(body)
    except InvalidRequest as exc:
        with pytest.raises(InvalidRequest) as caught:
            decode_predict_body(body)
        assert caught.value.details == exc.details
        return None
    cut = decode_predict_body(body)
    assert type(cut) is type(whole)
    if isinstance(cut, dict) and isinstance(cut.get("keys"), KeyColumn):
        assert {**cut, "keys": cut["keys"].tolist()} == whole
    else:
        assert cut == whole
    return cut


@pytest.mark.parametrize(
    ("body", "cut"),
    [
        (orjson.dumps({"keys": _KEYS, "columns": _COLUMNS}), True),
        (orjson.dumps({"keys": _KEYS, "columns": _COLUMNS, "errors": "per_instance"}), True),
        (orjson.dumps({"keys": _KEYS, "errors": "reject", "columns": _COLUMNS}), True),
        (json.dumps({"keys": _KEYS, "columns": _COLUMNS}).encode(), True),  # as requests
        (json.dumps({"keys": _KEYS, "columns": _COLUMNS}).encode().replace(b" ", b"  "), False),
        (orjson.dumps({"columns": _COLUMNS, "keys": _KEYS}), False),  # keys last
        (orjson.dumps({"keys": _KEYS[:199], "columns": _COLUMNS}), False),  # few keys
        (orjson.dumps({"keys": [*_KEYS[:-1], "k]"], "columns": _COLUMNS}), False),
        (orjson.dumps({"keys": [*_KEYS[:-1], "k\\"], "columns": _COLUMNS}), False),
        (orjson.dumps({"keys": [*_KEYS[:-1], "\u00e9"], "columns": _COLUMNS}), False),
        (orjson.dumps({"keys": list(range(250)), "columns": _COLUMNS}), False),
        (orjson.dumps({"keys": _KEYS, "columns": _COLUMNS})[:-1] + b',"keys":["x"]}', False),
        (orjson.dumps({"keys": _KEYS, "columns": _COLUMNS})[:-1] + b" ", False),  # cut short
        (orjson.dumps({"keys": _KEYS})[:-1] + b',"columns":{"age":[NaN]}}', False),
        (orjson.dumps({"keys": _KEYS})[:-1] + b",}", False),  # a comma JSON does not allow
        (orjson.dumps({"keys": _KEYS})[:-1] + b',"columns":{}} {}', False),
        (orjson.dumps({"keys": _KEYS}), False),  # nothing after the keys
    ],
    ids=[
        "columns", "errors-after", "errors-between", "spaced", "spaced-twice", "keys-last",
        "199-keys", "bracket-in-key", "backslash", "non-ascii", "integer-keys", "keys-again",
        "truncated", "nan", "trailing-comma", "two-documents", "keys-alone",
    ],
)  # fmt: skip
def test_predict_bodies_are_read_as_orjson_reads_them_with_keys_cut_where_they_can_be(
    body: bytes, cut: bool
) -> None:
    read = _read_alike(body)
    keys = read.get("keys") if isinstance(read, dict) else None
    assert isinstance(keys, KeyColumn) == cut


_BYTES = [b'"', b",", b"]", b"[", b"{", b"}", b":", b"\\", b" ", b"a", b"1"]


@settings(max_examples=400, deadline=None)
@given(edits=byte_edits(st.integers(-40, 40), _BYTES), spaced=st.booleans())
def test_a_body_changed_around_the_end_of_its_keys_is_read_as_orjson_reads_it(
    edits: list[tuple[int, str, bytes]], spaced: bool
) -> None:
    """A fuzzer's bytes where the cut is made (the end of the keys and the next member):
    read as orjson reads them, or refused as it refuses them."""
    document = {"keys": _KEYS, "columns": _COLUMNS, "errors": "reject"}
    body = json.dumps(document).encode() if spaced else orjson.dumps(document)
    _read_alike(edited(body, edits, around=body.index(b'"]') + 2))


def test_a_body_whose_keys_are_cut_is_validated_as_one_read_whole() -> None:
    """The same batch, its keys a column: clean, with a bad value kept per key, with a key
    sent twice."""
    columns = {"age": list(range(250)), "plan": ["a"] * 250}
    body = {"keys": _KEYS, "columns": columns}
    cut, whole = decode_predict_body(orjson.dumps(body)), body
    assert isinstance(cut["keys"], KeyColumn)
    batch, expected = validate_request(cut, SPEC, 1_000), validate_request(whole, SPEC, 1_000)
    assert list(batch.keys) == list(expected.keys) == _KEYS
    assert batch.key_column is cut["keys"] and batch.key_column.json == orjson.dumps(_KEYS)
    assert [c.tolist() for c in batch.columns] == [c.tolist() for c in expected.columns]
    columns["age"][7] = "old"
    body["errors"] = "per_instance"
    batch = validate_request(decode_predict_body(orjson.dumps(body)), SPEC, 1_000)
    assert [(f.index, f.key) for f in batch.failures] == [(7, "k7")]
    assert batch.keys == [k for k in _KEYS if k != "k7"] and batch.all_keys == _KEYS
    assert batch.key_column is None
    twice = orjson.dumps({"keys": [*_KEYS, "k3"], "columns": _COLUMNS | {"age": [1] * 251}})
    refusal = refused(decode_predict_body(twice), 1_000)
    assert [(d.type, d.loc, d.key) for d in refusal.details] == [
        ("duplicate_key", ["keys", 3], "k3")
    ]
