"""The validate stage: wire instances -> keyed rows in the model's feature order, or errors.

Every error names the key (when the instance has one) and the field at fault. A request
with any error is rejected whole: nothing of it is predicted.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keyed_serving.model import ModelSpec
from keyed_serving.schemas import ErrorDetail, FeatureInfo, FeatureValue, Instance, Key

# Enough to fix a request in one go without an error body that dwarfs the request.
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class ValidRow:
    key: Key
    values: list[FeatureValue]


class InvalidRequest(Exception):
    """The request cannot be predicted as sent; ``details`` say where and why."""

    def __init__(self, summary: str, details: list[ErrorDetail]) -> None:
        super().__init__(summary)
        self.summary = summary
        self.details = details


def validate_instances(
    instances: Sequence[Instance], spec: ModelSpec, max_instances: int
) -> list[ValidRow]:
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
    errors = _duplicate_key_errors(instances)
    rows: list[ValidRow] = []
    for index, instance in enumerate(instances):
        values, instance_errors = _row_values(index, instance, spec.features)
        errors.extend(instance_errors)
        rows.append(ValidRow(instance.key, values))
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f" (first {len(shown)} shown)" if len(errors) > len(shown) else ""
        raise InvalidRequest(f"{len(errors)} invalid instance field(s){more}", shown)
    return rows


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
        problem = _type_problem(value, feature)
        if problem:
            error("wrong_type", feature.name, problem)
        values.append(value)
    return values, errors


def _type_problem(value: Any, feature: FeatureInfo) -> str | None:
    if value is None:
        return None  # the pipeline imputes missing values
    if feature.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number or null, got {type(value).__name__} {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if isinstance(value, int) and abs(value) > sys.float_info.max:
            return "number too large for the model (beyond float64)"
        return None
    if not isinstance(value, str):
        return f"expected a string (category) or null, got {type(value).__name__} {value!r}"
    return None
