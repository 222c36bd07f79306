"""The validate stage: a decoded /predict body -> keyed columns in the model's feature order.

Two shapes come in: rows (``{"instances": [{"key", "features"}]}``) and columns
(``{"keys": [...], "columns": {name: [...]}}``). Both become one ``ValidBatch``: the keys
and a list of values per feature for the rows the model can take, plus the failures of
the others. Nothing here makes an object per row: a 10,000-row request is a handful of
list comprehensions and one type check per column.

Two levels of problem. Request-level (no instances, too many, a key sent twice, a
malformed body, a columnar request missing a feature) rejects the whole request: there is
no unambiguous key to answer it by. Instance-level (a missing, unknown or mistyped feature,
a value out of the model's range) belongs to one key: the entry rejects the request with
all of them, or, in per-instance mode, answers them as that key's error. Every error names
the key and the field at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from keyed_serving.keys import Key, KeyColumn, find_key_problems, is_usable_key, shown
from keyed_serving.lazy import numpy as np
from keyed_serving.model.spec import ModelSpec, parse_datetime, takes_time_zones
from keyed_serving.schemas import ErrorDetail, FeatureInfo

# Enough to fix a request in one go without an error body that dwarfs the request.
MAX_REPORTED_ERRORS = 100
# scikit-learn's trees compare features as float32: a larger magnitude becomes infinity
# and the model raises on it (1e308 would poison a micro-batch). Refused at the door.
# float(np.finfo(np.float32).max), written out: numpy is not imported at import time
# (keyed_serving.lazy).
LARGEST_MAGNITUDE = (2 - 2**-23) * 2**127
ERROR_MODES = ("reject", "per_instance")
_NUMBER_TYPES = frozenset({int, float, type(None)})
_CATEGORY_TYPES = frozenset({str, type(None)})
_MISSING = object()
# Below this many values a Python pass over a column beats building a NumPy array for it.
_SMALL = 256


@dataclass(frozen=True)
class InstanceFailure:
    index: int
    key: Key
    details: list[ErrorDetail]


@dataclass
class ValidBatch:
    """A validated request: what goes to the model, and what was refused, by key.

    ``keys``/``columns`` hold the rows the model will see, in request order, the columns
    as NumPy arrays in the model's feature order; ``positions``
    says where each of them was in the request (``None``: every row, in order)."""

    received: int
    keys: Sequence[Key]  # a list; row positions (a range) in the unkeyed baseline
    columns: list[np.ndarray]
    positions: list[int] | None = None
    failures: list[InstanceFailure] = field(default_factory=list)
    shape: str = "rows"  # or "columns": the answer is given in the shape of the request
    errors: str = "reject"
    all_keys: Sequence[Key] = field(default_factory=list)  # every key received, request order
    # ``keys`` packed for the runner hop by the checks that judged them (None: pack them).
    key_column: KeyColumn | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def request_positions(self) -> Sequence[int]:
        """Where each row the model sees stood in the request."""
        return self.positions if self.positions is not None else range(len(self.keys))


class InvalidRequest(Exception):
    """The request cannot be predicted as sent; ``details`` say where and why."""

    def __init__(self, summary: str, details: list[ErrorDetail]) -> None:
        super().__init__(summary)
        self.summary = summary
        self.details = details


def decode_body(raw: bytes) -> Any:
    """A /predict body -> the decoded JSON; raises ``InvalidRequest`` (json_invalid) for a
    body that is not JSON (see ``read_json``)."""
    try:
        return read_json(raw)
    except ValueError as exc:
        raise _invalid("json_invalid", f"the body is not valid JSON: {exc}", ["body"]) from None


def decode_predict_body(raw: bytes) -> Any:
    """``decode_body`` for /predict: a columnar body that sends its keys first has them cut
    from its text as they are (``KeyColumn.from_json``), not read as a Python string each
    (at 10,000 keys, reading them was a third of reading the body); the rest is read by
    orjson. The decoded body is the same either way; a body whose keys cannot be cut so is
    read whole."""
    return _keys_cut_out(raw) or decode_body(raw)


_KEYS_FIRST = b'{"keys":'


def _keys_cut_out(raw: bytes) -> dict[str, Any] | None:
    """``{"keys":["k1",...],"<member>"...}`` (compact, or spaced as Python's own JSON
    writer and ``requests`` write it: ``{"keys": ["k1", ...], "<member>"...``) -> the body,
    its keys a ``KeyColumn`` cut from the text. None for any other body, and for one whose
    keys or rest orjson would read otherwise or refuse (then read whole, which says why).

    The array is taken to end at the first ``]``, followed by a comma and the next name's
    quote: ``from_json`` refuses an array that ends elsewhere (a key holding a ``]`` is
    read whole). What follows the comma is the next member, so ``{`` and it are the
    body's other members, valid exactly when the body is."""
    if not raw.startswith(_KEYS_FIRST):
        return None
    start = len(_KEYS_FIRST) + (raw[len(_KEYS_FIRST) : len(_KEYS_FIRST) + 1] == b" ")
    end = raw.find(b"]", start)
    if end < 0 or raw[end + 1 : end + 3] not in (b',"', b", "):
        return None
    column = KeyColumn.from_json(raw[start : end + 1])
    if column is None:
        return None
    rest_text = bytearray(memoryview(raw)[end + 1 :])  # `,"<member>"...}`
    rest_text[0] = ord("{")
    try:
        rest = orjson.loads(rest_text)
    except orjson.JSONDecodeError:
        return None
    # A "keys" sent again among the rest is the one taken, as JSON's last value of a name is.
    return {"keys": column, **rest}


def read_json(raw: bytes) -> Any:
    """JSON as a body holds it; raises ``ValueError`` saying why a body is not JSON.

    orjson reads it. A body it refuses is read again by Python's reader only to take the
    non-JSON literals NaN and Infinity that some writers emit (Python's own JSON writer
    among them), so that they are refused by key and field (out_of_range), or taken as
    missing where a protocol says NaN is. That second reader must accept nothing else
    orjson refuses: integers beyond 64 bits are read as floats, as orjson reads them, and
    the result must be writable by orjson (no lone surrogates, no deep nesting; a real
    body is four levels deep)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        strict_error = str(exc)
    try:
        decoded = json.loads(raw, parse_int=_integer_as_orjson_reads_it)
        orjson.dumps(decoded)
    except (ValueError, RecursionError, orjson.JSONEncodeError) as exc:
        reason = strict_error if isinstance(exc, ValueError | RecursionError) else str(exc)
        raise ValueError(reason) from None
    return decoded


def _integer_as_orjson_reads_it(text: str) -> int | float:
    number = int(text)
    if -(2**63) <= number < 2**64:
        return number
    try:
        return float(number)
    except OverflowError:  # beyond any float: orjson refuses it too, as a ValueError here
        raise ValueError(text[:20]) from None


def validate_request(
    body: Any, spec: ModelSpec, max_instances: int, keyed: bool = True
) -> ValidBatch:
    """A decoded body -> ``ValidBatch``; raises ``InvalidRequest`` for request-level faults.
    Instance failures are in ``failures``; with errors="reject" the caller refuses them.

    ``keyed=False`` takes bodies without keys and numbers the rows instead (positions from
    0, unique by construction, so nothing about them is checked; an int64 range on the hop):
    only for the benchmark's unkeyed baseline (bench/unkeyed_service.py), never served by
    this service."""
    if not isinstance(body, dict):
        raise _invalid("body", "the body must be a JSON object: {instances} or {keys, columns}", [])
    unknown = set(body) - {"instances", "keys", "columns", "errors"}
    if unknown:
        names = sorted(map(str, unknown))
        raise _invalid(
            "unknown_field", f"unknown field(s) {names}; send instances, or keys and columns", []
        )
    errors = body.get("errors", "reject")
    if errors not in ERROR_MODES:
        raise _invalid(
            "errors", f"errors must be one of {list(ERROR_MODES)}, got {errors!r}", ["errors"]
        )
    if "instances" in body and ("keys" in body or "columns" in body):
        raise _invalid("body", "send instances, or keys and columns, not both", [])
    if "instances" in body:
        keys, key_column, columns, failures = _from_rows(
            body["instances"], spec, max_instances, keyed
        )
        shape = "rows"
    elif "keys" in body or "columns" in body:
        sent_keys: Any = body.get("keys")
        if not keyed:
            some_column: Any = next(iter((body.get("columns") or {}).values()), [])
            sent_keys = range(len(some_column)) if isinstance(some_column, list) else None
        keys, key_column, columns, failures = _from_columns(
            sent_keys, body.get("columns"), spec, max_instances, keyed
        )
        shape = "columns"
    else:
        raise _invalid("empty_instances", "send instances, or keys and columns", ["instances"])
    batch = ValidBatch(
        len(keys), keys, [], shape=shape, errors=errors, all_keys=keys, key_column=key_column
    )
    kept: list[int] | None = None
    if failures:
        batch.key_column = None  # packed for every key sent, not for the ones kept
        failed = {failure.index for failure in failures}
        kept = [i for i in range(len(keys)) if i not in failed]
        batch.positions = kept
        listed = keys.tolist() if isinstance(keys, KeyColumn) else keys
        batch.all_keys = listed  # the answer writes every key received, as a list
        batch.keys = [listed[i] for i in kept]
        batch.failures = sorted(failures, key=lambda failure: failure.index)
    batch.columns = [
        _as_array(column, feature, kept)
        for feature, column in zip(spec.features, columns, strict=True)
    ]
    return batch


def _as_array(
    column: list[Any] | np.ndarray, feature: FeatureInfo, kept: list[int] | None
) -> np.ndarray:
    """A checked column as the runner takes it: float64 (None -> NaN) or object."""
    if isinstance(column, np.ndarray):
        return column if kept is None else column[kept]
    if kept is not None:
        column = [column[i] for i in kept]
    if feature.type == "number":
        return np.array(column, dtype=np.float64)
    values = np.empty(len(column), dtype=object)
    values[:] = column
    return values


def rejection(failures: Sequence[InstanceFailure]) -> InvalidRequest:
    """The whole request's 4xx for instance failures, when the caller asked for all-or-nothing."""
    details = [detail for failure in failures for detail in failure.details]
    reported = details[:MAX_REPORTED_ERRORS]
    more = f" (first {len(reported)} shown)" if len(details) > len(reported) else ""
    return InvalidRequest(f"{len(details)} invalid instance field(s){more}", reported)


def _invalid(kind: str, msg: str, loc: list[str | int]) -> InvalidRequest:
    return InvalidRequest(msg, [ErrorDetail(type=kind, msg=msg, loc=loc)])


def _check_count(count: int, max_instances: int, where: str) -> None:
    if count == 0:
        raise _invalid("empty_instances", "send at least one instance", [where])
    if count > max_instances:
        raise _invalid(
            "too_many_instances",
            f"{count} instances sent, at most {max_instances} per request; split the request",
            [where],
        )


def _check_keys(keys: Sequence[Any], loc: Any) -> KeyColumn | None:
    """Every key usable and sent once. ``loc(i)`` says where key ``i`` is in the body.
    Returns them packed for the hop, where the checks could pack them."""
    problems = find_key_problems(keys)
    if problems.unusable:
        details = [
            ErrorDetail(type="invalid_key", msg=f"unusable key: {reason}", loc=loc(index))
            for index, reason in problems.unusable[:MAX_REPORTED_ERRORS]
        ]
        raise InvalidRequest(f"{len(problems.unusable)} invalid key(s)", details)
    if problems.duplicated:
        duplicates = [
            ErrorDetail(
                type="duplicate_key",
                msg=f"key {key!r} is sent {count} times; keys must be unique within a request",
                loc=loc(index),
                key=key,
                field="key",
            )
            for index, key, count in problems.duplicated[:MAX_REPORTED_ERRORS]
        ]
        raise InvalidRequest(f"{len(problems.duplicated)} duplicated key(s)", duplicates)
    return problems.column


def _positions(n: int) -> tuple[Sequence[int], KeyColumn]:
    """Rows numbered 0..n-1 in place of keys (the unkeyed baseline), and their column."""
    return range(n), KeyColumn("int", np.arange(n, dtype=np.int64).tobytes())


def _from_rows(
    instances: Any, spec: ModelSpec, max_instances: int, keyed: bool = True
) -> tuple[Sequence[Key], KeyColumn | None, list[Any], list[InstanceFailure]]:
    if not isinstance(instances, list):
        raise _invalid("body", "instances must be a list", ["instances"])
    _check_count(len(instances), max_instances, "instances")
    fields = 2 if keyed else 1  # key and features, or features alone
    malformed = [
        i
        for i, instance in enumerate(instances)
        if not (
            type(instance) is dict
            and len(instance) == fields
            and ("key" in instance or not keyed)
            and type(instance.get("features")) is dict
        )
    ]
    if malformed:
        raise InvalidRequest(
            f"{len(malformed)} malformed instance(s)",
            [_malformed(i, instances[i]) for i in malformed[:MAX_REPORTED_ERRORS]],
        )
    if keyed:
        keys: Sequence[Key] = [instance["key"] for instance in instances]
        key_column = _check_keys(keys, lambda i: ["instances", i, "key"])
    else:
        keys, key_column = _positions(len(instances))
    features = [instance["features"] for instance in instances]
    names = spec.feature_names
    columns = [[row.get(name, _MISSING) for row in features] for name in names]
    problems: dict[int, list[ErrorDetail]] = {}
    expected = set(names)
    for index, row in enumerate(features):
        if row.keys() != expected:
            for name in row:
                if name not in expected:
                    _add(problems, keys, index, name, "unknown_feature",
                         "the model has no such feature (see /model_info)")  # fmt: skip
    checked = [
        _check_column(column, feature, keys, problems)
        for feature, column in zip(spec.features, columns, strict=True)
    ]
    return keys, key_column, _prefer(checked, columns), _failures(problems, keys)


def _malformed(index: int, instance: Any) -> ErrorDetail:
    key = instance.get("key") if isinstance(instance, dict) else None
    if not isinstance(instance, dict):
        reason = "each instance must be an object {key, features}"
    elif "key" not in instance:
        reason = "the key is missing: each instance needs its own key"
    elif not isinstance(instance.get("features"), dict):
        reason = "features must be an object of feature values by name"
    else:
        extra = sorted(map(str, set(instance) - {"key", "features"}))
        reason = f"unknown field(s) {extra}; an instance has key and features only"
    named = f"instance with key {key!r}: " if is_usable_key(key) else ""
    return ErrorDetail(
        type="missing_key"
        if isinstance(instance, dict) and "key" not in instance
        else "invalid_instance",
        msg=f"{named}{reason}",
        loc=["instances", index],
        key=key if is_usable_key(key) else None,
    )


def _from_columns(
    keys: Any, columns: Any, spec: ModelSpec, max_instances: int, keyed: bool = True
) -> tuple[Sequence[Key], KeyColumn | None, list[Any], list[InstanceFailure]]:
    if not isinstance(keys, (list, KeyColumn) if keyed else range):
        raise _invalid("body", "keys must be a list (one key per row)", ["keys"])
    if not isinstance(columns, dict):
        raise _invalid("body", "columns must be an object {feature: [values]}", ["columns"])
    _check_count(len(keys), max_instances, "keys")
    key_column: KeyColumn | None
    if not keyed:  # row positions (see validate_request)
        keys, key_column = _positions(len(keys))
    else:
        key_column = _check_keys(keys, lambda i: ["keys", i])
    names = spec.feature_names
    unknown = sorted(set(map(str, columns)) - set(names))
    missing = [name for name in names if name not in columns]
    wrong_length = [
        name
        for name in names
        if name in columns
        and (not isinstance(columns[name], list | np.ndarray) or len(columns[name]) != len(keys))
    ]
    length = f"must be a list of {len(keys)} values, one per key"
    faults = [(n, "unknown_feature", "the model has no such feature") for n in unknown]
    faults += [(n, "missing_feature", "is missing; send nulls for unknowns") for n in missing]
    faults += [(n, "wrong_length", length) for n in wrong_length]
    details = [
        ErrorDetail(type=kind, msg=f"column {n!r}: {msg}", loc=["columns", n], field=n)
        for n, kind, msg in faults
    ]
    if details:
        raise InvalidRequest(f"{len(details)} invalid column(s)", details)
    ordered = [columns[name] for name in names]
    problems: dict[int, list[ErrorDetail]] = {}
    checked = [
        _check_column(column, feature, keys, problems, loc="columns")
        for feature, column in zip(spec.features, ordered, strict=True)
    ]
    return keys, key_column, _prefer(checked, ordered), _failures(problems, keys)


def _check_column(
    column: list[Any] | np.ndarray,
    feature: FeatureInfo,
    keys: Sequence[Key],
    problems: dict[int, list[ErrorDetail]],
    loc: str = "instances",
) -> np.ndarray | None:
    """Adds the column's bad values to ``problems`` by row. One pass over the types in C for
    a clean column; a row-by-row look only where that pass finds something. A number column
    found clean comes back as float64, to be used as it is.

    A column that is a float64 array already (an Open Inference Protocol input, decoded
    without a Python value per element) holds NaN for its missing values, as the protocol
    says; only the infinities and magnitudes the model cannot take are looked for."""
    if isinstance(column, np.ndarray):
        beyond = np.flatnonzero(~(np.abs(column) <= LARGEST_MAGNITUDE) & ~np.isnan(column))
        for index in beyond.tolist():
            problem = _value_problem(column[index].item(), feature)
            if problem:
                _add(problems, keys, index, feature.name, *problem, loc)
        return column
    kinds = set(map(type, column))
    if feature.type == "number":
        if kinds <= _NUMBER_TYPES and len(column) <= _SMALL:
            # NaN, infinities and magnitudes too large all fail this comparison.
            candidates = [
                i
                for i, value in enumerate(column)
                if value is not None and not -LARGEST_MAGNITUDE <= value <= LARGEST_MAGNITUDE
            ]
        elif kinds <= _NUMBER_TYPES:
            try:
                values = np.array(column, dtype=np.float64)  # None -> nan
                suspect = ~(np.abs(values) <= LARGEST_MAGNITUDE)  # nan, inf, huge
                rows = np.flatnonzero(suspect).tolist()
            except OverflowError:  # an integer beyond any float
                rows = list(range(len(column)))
            candidates = [i for i in rows if column[i] is not None]
            if not candidates:
                return values
        else:
            candidates = [i for i, value in enumerate(column) if type(value) not in _NUMBER_TYPES]
    elif feature.type == "datetime":
        # Each text is parsed here, as the model frame will parse it: a bad one fails its
        # own key, not the micro-batch it would share with other callers' rows.
        candidates = [i for i, value in enumerate(column) if value is not None]
    else:
        if kinds <= _CATEGORY_TYPES:
            return None
        candidates = [i for i, value in enumerate(column) if type(value) not in _CATEGORY_TYPES]
    for index in candidates:
        value = column[index]
        if value is _MISSING:
            _add(problems, keys, index, feature.name, "missing_feature",
                 "missing; send null if the value is unknown", loc)  # fmt: skip
            continue
        problem = _value_problem(value, feature)
        if problem:
            _add(problems, keys, index, feature.name, *problem, loc)
    return None


def _prefer(checked: list[np.ndarray | None], columns: list[Any]) -> list[Any]:
    return [
        array if array is not None else column
        for array, column in zip(checked, columns, strict=True)
    ]


def _value_problem(value: Any, feature: FeatureInfo) -> tuple[str, str] | None:
    if value is None:
        return None  # the pipeline imputes missing values
    if feature.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return ("wrong_type", f"expected a number or null, got {shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            return "out_of_range", f"expected a finite number, got {shown(value)}"
        if abs(value) > LARGEST_MAGNITUDE:
            return (
                "out_of_range",
                f"magnitude above {LARGEST_MAGNITUDE:.3g}, which the model cannot take",
            )
        return None
    if feature.type == "datetime":
        return _datetime_problem(value, feature)
    if not isinstance(value, str):
        return (
            "wrong_type",
            f"expected a string (category) or null, got {shown(value)}",
        )
    return None


def _datetime_problem(value: Any, feature: FeatureInfo) -> tuple[str, str] | None:
    zoned = takes_time_zones(feature.dtype)
    expected = "an ISO 8601 date-time string " + (
        "with a UTC offset (2024-01-05T10:30:00+00:00)" if zoned else "(2024-01-05T10:30:00)"
    )
    if not isinstance(value, str):
        return "wrong_type", f"expected {expected} or null, got {shown(value)}"
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return "wrong_type", f"expected {expected}, got {shown(value)}"
    if (parsed.tzinfo is not None) != zoned:
        which = "with" if zoned else "without"
        return "wrong_type", f"the model takes date-times {which} a time zone: {shown(value)}"
    return None


def _add(
    problems: dict[int, list[ErrorDetail]],
    keys: Sequence[Key],
    index: int,
    name: str,
    kind: str,
    msg: str,
    loc: str = "instances",
) -> None:
    key = keys[index]
    where: list[str | int] = (
        ["instances", index, "features", name] if loc == "instances" else ["columns", name, index]
    )
    problems.setdefault(index, []).append(
        ErrorDetail(
            type=kind,
            msg=f"instance with key {key!r}: feature {name!r}: {msg}",
            loc=where,
            key=key,
            field=name,
        )
    )


def _failures(problems: dict[int, list[ErrorDetail]], keys: Sequence[Key]) -> list[InstanceFailure]:
    return [InstanceFailure(index, keys[index], details) for index, details in problems.items()]
