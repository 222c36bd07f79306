"""The validate stage: wire instances -> keyed rows in the model's feature order, or errors.

Two levels. Request-level problems (no instances, too many, a key sent twice) reject the
whole request: there is no unambiguous key to answer them by. Instance-level problems
(a missing, unknown or mistyped feature, a value out of the model's range) belong to one
key: the entry rejects the request with all of them, or, in per-instance mode, answers
them as that key's error. Every error names the key and the field at fault.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keyed_serving.model import ModelSpec
from keyed_serving.schemas import ErrorDetail, FeatureInfo, FeatureValue, Instance, Key

# Enough to fix a request in one go without an error body that dwarfs the request.
MAX_REPORTED_ERRORS = 100
# scikit-learn's trees compare features as float32: a larger magnitude becomes infinity
# and the model raises on it (1e308 would poison a micro-batch). Refused at the door.
LARGEST_MAGNITUDE = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ValidRow:
    index: int
    key: Key
    values: list[FeatureValue]


@dataclass(frozen=True)
class InstanceFailure:
    index: int
    key: Key
    details: list[ErrorDetail]


class InvalidRequest(Exception):
    """The request cannot be predicted as sent; ``details`` say where and why."""

    def __init__(self, summary: str, details: list[ErrorDetail]) -> None:
        super().__init__(summary)
        self.summary = summary
        self.details = details


def check_request(instances: Sequence[Instance], max_instances: int) -> None:
    """Request-level checks; raises ``InvalidRequest``."""
    if not instances:
        raise InvalidRequest(
            "instances is empty",
            [
                ErrorDetail(
                    type="empty_instances", msg="send at least one instance", loc=["instances"]
                )
            ],
        )
    if len(instances) > max_instances:
        raise InvalidRequest(
            f"{len(instances)} instances, at most {max_instances} per request",
            [
                ErrorDetail(
                    type="too_many_instances",
                    msg=f"{len(instances)} instances sent, at most {max_instances} per request; "
                    "split the request",
                    loc=["instances"],
                )
            ],
        )
    duplicates = _duplicate_key_errors(instances)
    if duplicates:
        raise InvalidRequest(
            f"{len(duplicates)} duplicated key(s)", duplicates[:MAX_REPORTED_ERRORS]
        )


def validate_instances(
    instances: Sequence[Instance], spec: ModelSpec
) -> tuple[list[ValidRow], list[InstanceFailure]]:
    """Each instance as a row for the model, or as the failure that keeps it from being one."""
    rows: list[ValidRow] = []
    failures: list[InstanceFailure] = []
    for index, instance in enumerate(instances):
        values, details = _row_values(index, instance, spec.features)
        if details:
            failures.append(InstanceFailure(index, instance.key, details))
        else:
            rows.append(ValidRow(index, instance.key, values))
    return rows, failures


def rejection(failures: Sequence[InstanceFailure]) -> InvalidRequest:
    """The whole request's 4xx for instance failures, when the caller asked for all-or-nothing."""
    details = [detail for failure in failures for detail in failure.details]
    shown = details[:MAX_REPORTED_ERRORS]
    more = f" (first {len(shown)} shown)" if len(details) > len(shown) else ""
    return InvalidRequest(f"{len(details)} invalid instance field(s){more}", shown)


def _duplicate_key_errors(instances: Sequence[Instance]) -> list[ErrorDetail]:
    # (type, value) so that the integer key 1 and the string key "1" stay different keys.
    counts = Counter((type(i.key), i.key) for i in instances)
    duplicated = {typed for typed, n in counts.items() if n > 1}
    errors: list[ErrorDetail] = []
    seen: set[tuple[type, Key]] = set()
    for index, instance in enumerate(instances):
        typed = (type(instance.key), instance.key)
        if typed in duplicated and typed not in seen:
            seen.add(typed)
            errors.append(
                ErrorDetail(
                    type="duplicate_key",
                    msg=f"key {instance.key!r} is sent {counts[typed]} times; "
                    "keys must be unique within a request",
                    loc=["instances", index, "key"],
                    key=instance.key,
                    field="key",
                )
            )
    return errors


def _row_values(
    index: int, instance: Instance, features: Sequence[FeatureInfo]
) -> tuple[list[FeatureValue], list[ErrorDetail]]:
    key = instance.key
    errors: list[ErrorDetail] = []

    def error(kind: str, name: str, msg: str) -> None:
        errors.append(
            ErrorDetail(
                type=kind,
                msg=f"instance with key {key!r}: feature {name!r}: {msg}",
                loc=["instances", index, "features", name],
                key=key,
                field=name,
            )
        )

    known = {feature.name for feature in features}
    for name in instance.features:
        if name not in known:
            error("unknown_feature", name, "the model has no such feature (see /model_info)")
    values: list[FeatureValue] = []
    for feature in features:
        if feature.name not in instance.features:
            error("missing_feature", feature.name, "missing; send null if the value is unknown")
            values.append(None)
            continue
        value = instance.features[feature.name]
        problem = _value_problem(value, feature)
        if problem:
            error(*problem)
        values.append(value)  # type: ignore[arg-type]  # checked just above
    return values, errors


def _value_problem(value: Any, feature: FeatureInfo) -> tuple[str, str, str] | None:
    if value is None:
        return None  # the pipeline imputes missing values
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if feature.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return (
                "wrong_type",
                feature.name,
                f"expected a number or null, got {type(value).__name__} {shown}",
            )
        if isinstance(value, float) and not math.isfinite(value):
            return "out_of_range", feature.name, f"expected a finite number, got {shown}"
        if abs(value) > LARGEST_MAGNITUDE:
            return (
                "out_of_range",
                feature.name,
                f"magnitude above {LARGEST_MAGNITUDE:.3g}, which the model cannot take",
            )
        return None
    if not isinstance(value, str):
        return (
            "wrong_type",
            feature.name,
            f"expected a string (category) or null, got {type(value).__name__} {shown}",
        )
    return None
