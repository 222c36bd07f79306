"""``POST /labels``: a body of labels -> the rows kept in ``labels/date=…/``, and the refused.

    {"labels": [{"key": K, "label": V, "time": "2026-12-06T10:00:00Z", "request_id": "…"}]}

Each label is checked on its own and refused by reason (the others are kept):
- ``invalid_key``: not a key (:mod:`keyed_serving.keys`, the one definition);
- ``invalid_label``: for a regressor, not a finite number (a boolean is not a number); for a
  classifier, not a scalar (a string, number or boolean; kept as its class text, so ``1``,
  ``1.0`` and ``"1"`` are the same class). A class the model does not know is kept: the
  evaluation counts it (``unknown_class_labels``);
- ``invalid_time``: not an ISO 8601 date-time text. A time without an offset is UTC;
- ``invalid_request_id``: not a non-empty text of at most 256 characters;
- ``invalid_item``: not an object with ``key`` and ``label``, or with other fields.

A body that is not an object with a ``labels`` list (or holds more than the server's
maximum of instances) is refused whole (``InvalidLabels``).
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from keyed_serving.capture import layout
from keyed_serving.capture.files import write_atomic
from keyed_serving.keys import key_problem, shown

if TYPE_CHECKING:
    import pyarrow as pa

MAX_REPORTED_ERRORS = 100
MAX_REQUEST_ID_LENGTH = 256
FIELDS = frozenset({"key", "label", "time", "request_id"})


class Label(BaseModel):
    key: str | int = Field(description="The key the prediction was asked for, as sent.")
    label: str | int | float | bool = Field(
        description="What really happened: a class (classifier) or a number (regressor)."
    )
    time: str | None = Field(
        default=None,
        description="When it was true, ISO 8601 (UTC without an offset): joins the latest "
        "prediction of the key at or before it. Unset: the latest prediction.",
    )
    request_id: str | None = Field(
        default=None,
        description="The X-Request-ID of the answer: joins exactly that prediction.",
    )


class LabelsRequest(BaseModel):
    """The body of ``POST /labels`` (its OpenAPI schema; the handler reads the raw body)."""

    labels: list[Label]


class InvalidLabels(ValueError):
    """The body is not a labels body; the message says why."""


@dataclass
class LabelRows:
    """The labels of a body that were kept, as rows of the layout, and those refused."""

    keys: list[str] = field(default_factory=list)
    key_types: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    times: list[datetime.datetime | None] = field(default_factory=list)
    request_ids: list[str | None] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.keys)

    def refuse(self, index: int, key: Any, reason: str, message: str) -> None:
        self.refused[reason] += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            shown_key = key if type(key) in (str, int) else None
            self.errors.append(
                {"index": index, "key": shown_key, "reason": reason, "message": message}
            )

    def table(self, model: str, received: datetime.datetime) -> pa.Table:
        import pyarrow as pa

        utc = pa.timestamp("us", tz="UTC")
        n = len(self.keys)
        return pa.table(
            {
                layout.KEY: pa.array(self.keys, pa.string()),
                layout.KEY_TYPE: pa.array(self.key_types, pa.string()),
                layout.LABEL: pa.array(self.labels, pa.string()),
                layout.LABEL_TIME: pa.array(self.times, utc),
                layout.REQUEST_ID: pa.array(self.request_ids, pa.string()),
                layout.RECEIVED: pa.array([received] * n, utc),
                layout.LABEL_MODEL: pa.array([model] * n, pa.string()),
            }
        )

    def answer(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "refused": dict(self.refused), "errors": self.errors}


def read_labels(body: Any, task: str, max_labels: int) -> LabelRows:
    """The labels of a decoded body, each checked against ``task``; raises ``InvalidLabels``
    for a body that is not ``{"labels": [...]}`` of at most ``max_labels``."""
    if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
        raise InvalidLabels('the body must be an object {"labels": [{"key", "label"}, ...]}')
    extra = sorted(set(body) - {"labels"})
    if extra:
        raise InvalidLabels(f"unknown field(s) in the body: {', '.join(extra)}")
    items = body["labels"]
    if len(items) > max_labels:
        raise InvalidLabels(f"{len(items)} labels in one body; at most {max_labels}")
    rows = LabelRows()
    for index, item in enumerate(items):
        _read_one(rows, index, item, task)
    return rows


def _read_one(rows: LabelRows, index: int, item: Any, task: str) -> None:
    if not isinstance(item, dict) or "key" not in item or "label" not in item:
        what = shown(item) if not isinstance(item, dict) else "an object without key or label"
        rows.refuse(
            index, None, "invalid_item", f'labels[{index}]: {what}; send {{"key", "label"}}'
        )
        return
    key = item["key"]
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        rows.refuse(index, key, "invalid_item", f"labels[{index}]: unknown field(s) {unknown}")
        return
    problem = key_problem(key)
    if problem is not None:
        rows.refuse(index, key, "invalid_key", f"labels[{index}].key: {problem}")
        return
    label = _label_text(item["label"], task)
    if label is None:
        wanted = "a finite number" if task == "regression" else "a class (a string or a number)"
        message = f"labels[{index}].label: {shown(item['label'])}; {wanted}"
        rows.refuse(index, key, "invalid_label", message)
        return
    time = item.get("time")
    when = None if time is None else layout.utc_time(time)
    if time is not None and when is None:
        message = f"labels[{index}].time: {shown(time)}; an ISO 8601 date-time (UTC if no offset)"
        rows.refuse(index, key, "invalid_time", message)
        return
    request_id = item.get("request_id")
    if request_id is not None and not (
        type(request_id) is str and 0 < len(request_id) <= MAX_REQUEST_ID_LENGTH
    ):
        message = (
            f"labels[{index}].request_id: {shown(request_id)}; "
            f"a text of 1 to {MAX_REQUEST_ID_LENGTH} characters (the answer's X-Request-ID)"
        )
        rows.refuse(index, key, "invalid_request_id", message)
        return
    text, kind = layout.key_text(key)
    rows.keys.append(text)
    rows.key_types.append(kind)
    rows.labels.append(label)
    rows.times.append(when)
    rows.request_ids.append(request_id)


def _label_text(label: Any, task: str) -> str | None:
    """A label as the layout keeps it, or None when the task cannot take it."""
    if task == "regression":
        if isinstance(label, bool) or not isinstance(label, int | float):
            return None
        try:
            number = float(label)
        except OverflowError:
            return None
        return repr(number) if math.isfinite(number) else None
    if isinstance(label, bool | str | int):
        return layout.class_text(label)
    if isinstance(label, float) and math.isfinite(label):
        return layout.class_text(label)
    return None


def write_labels(root: Path, rows: LabelRows, model: str, stem: str) -> Path | None:
    """Appends the kept labels under ``root/labels/date=<received date>/<stem>.parquet``,
    durable (fsync'ed) before it returns; None when there is nothing to keep. Raises
    ``OSError`` when they cannot be written. Blocks: call it off the event loop."""
    if not rows.accepted:
        return None
    received = datetime.datetime.now(datetime.UTC)
    table = rows.table(model, received)
    return write_atomic(
        table, layout.labels_dir(root, layout.date_of(received)), stem, durable=True
    )
