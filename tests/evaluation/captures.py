"""Hand-made capture directories for the evaluation tests, written with pyarrow in the
layout of keyed_serving.capture.layout (what the server's capture writes), and a
stand-in for keyed_serving.evaluation.metrics while that module is not in the tree."""

from __future__ import annotations

import datetime
import importlib
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from keyed_serving.capture import layout

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
CLASSES = ["no", "yes"]


def at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def prediction(
    key: Any,
    hours: float,
    label: Any = "yes",
    *,
    request_id: str | None = None,
    error: str | None = None,
    p_yes: float | None = None,
) -> dict[str, Any]:
    """A captured prediction row of a classifier over CLASSES (or a regressor: ``label``
    a number)."""
    text, kind = layout.key_text(key)
    row: dict[str, Any] = {
        layout.REQUEST_ID: request_id or f"r-{text}-{hours}",
        layout.KEY: text,
        layout.KEY_TYPE: kind,
        layout.TS: at(hours),
        layout.PREDICTION: None if error else label,
        layout.ERROR: error,
        layout.ERROR_MESSAGE: "it failed" if error else None,
        layout.SOURCE: "predict",
    }
    if isinstance(label, str):
        if p_yes is None:
            p_yes = 0.8 if label == "yes" else 0.3
        row[layout.PROBABILITY_PREFIX + "no"] = None if error else 1 - p_yes
        row[layout.PROBABILITY_PREFIX + "yes"] = None if error else p_yes
    return row


def write_predictions(
    root: Path,
    rows: Sequence[dict[str, Any]],
    *,
    version: str = "v1",
    model: str = "churn",
    task: str = "classification",
    classes: Sequence[str] | None = CLASSES,
    name: str = "part-0",
) -> None:
    """The rows, one file per date partition, with the metadata the capture writes."""
    by_date: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_date.setdefault(layout.date_of(row[layout.TS]), []).append(row)
    metadata = {
        layout.META_TASK: task.encode(),
        layout.META_FEATURES: b'["tenure"]',
    }
    if task == "classification":
        metadata[layout.META_CLASSES] = orjson.dumps(list(classes or []))
    for date, chunk in by_date.items():
        fields = [
            pa.field(layout.REQUEST_ID, pa.string()),
            pa.field(layout.KEY, pa.string()),
            pa.field(layout.KEY_TYPE, pa.string()),
            pa.field(layout.TS, pa.timestamp("us", tz="UTC")),
            pa.field(layout.PREDICTION, pa.string() if task == "classification" else pa.float64()),
            pa.field(layout.ERROR, pa.string()),
            pa.field(layout.ERROR_MESSAGE, pa.string()),
            pa.field(layout.SOURCE, pa.string()),
        ]
        if task == "classification":
            fields += [pa.field(layout.PROBABILITY_PREFIX + c, pa.float64()) for c in classes or []]
        fields.append(pa.field(layout.FEATURE_PREFIX + "tenure", pa.float64()))
        schema = pa.schema(fields, metadata=metadata)
        columns = {
            f.name: [r.get(f.name, 1.0 if f.name.startswith("feature_") else None) for r in chunk]
            for f in fields
        }
        directory = layout.predictions_dir(root, model, version, date)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns, schema=schema), directory / f"{name}.parquet")


def label(
    key: Any,
    value: Any,
    hours: float | None = None,
    *,
    request_id: str | None = None,
    received: float | None = None,
    model: str | None = "churn",
) -> dict[str, Any]:
    text, kind = layout.key_text(key)
    return {
        layout.KEY: text,
        layout.KEY_TYPE: kind,
        layout.LABEL: layout.class_text(value) if isinstance(value, str) else repr(float(value)),
        layout.LABEL_TIME: None if hours is None else at(hours),
        layout.REQUEST_ID: request_id,
        layout.RECEIVED: at(received if received is not None else 1000.0),
        layout.LABEL_MODEL: model,
    }


def write_labels(root: Path, rows: Sequence[dict[str, Any]], name: str = "labels-0") -> None:
    schema = pa.schema(
        [
            pa.field(layout.KEY, pa.string()),
            pa.field(layout.KEY_TYPE, pa.string()),
            pa.field(layout.LABEL, pa.string()),
            pa.field(layout.LABEL_TIME, pa.timestamp("us", tz="UTC")),
            pa.field(layout.REQUEST_ID, pa.string()),
            pa.field(layout.RECEIVED, pa.timestamp("us", tz="UTC")),
            pa.field(layout.LABEL_MODEL, pa.string()),
        ]
    )
    directory = layout.labels_dir(root, "2026-03-10")
    directory.mkdir(parents=True, exist_ok=True)
    columns = {f.name: [r[f.name] for r in rows] for f in schema}
    pq.write_table(pa.table(columns, schema=schema), directory / f"{name}.parquet")


def write_drops(root: Path, dropped: Sequence[tuple[float, int]]) -> None:
    directory = layout.drops_dir(root, "2026-03-02")
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            layout.TS: pa.array([at(h) for h, _ in dropped], pa.timestamp("us", tz="UTC")),
            layout.WRITER: ["host-1-0"] * len(dropped),
            layout.DROPPED: pa.array([n for _, n in dropped], pa.int64()),
            layout.DROP_REASON: ["buffer_full"] * len(dropped),
        }
    )
    pq.write_table(table, directory / "drops-0.parquet")


# A stand-in for keyed_serving.evaluation.metrics (another helper's module), the contract's
# signatures with scikit-learn's point values and no intervals; used only while the real
# module is absent.


def _stand_in_metrics() -> types.ModuleType:
    from sklearn import metrics as sk

    module = types.ModuleType("keyed_serving.evaluation.metrics")

    def metric(value: Any, n: int, min_count: int) -> dict[str, Any]:
        return {"value": value, "low": None, "high": None, "n": n, "too_few": n < min_count}

    def quality(
        task,
        classes,
        y_true,
        y_pred,
        proba,
        *,
        min_count=30,
        confidence=0.95,
        resamples=200,
        seed=0,
    ):  # type: ignore[no-untyped-def]
        n = len(y_true)
        if task == "regression":
            values = (
                {
                    "mae": sk.mean_absolute_error(y_true, y_pred),
                    "rmse": float(np.sqrt(sk.mean_squared_error(y_true, y_pred))),
                    "r2": sk.r2_score(y_true, y_pred) if n > 1 else None,
                    "bias": float(np.mean(y_pred - y_true)),
                }
                if n
                else dict.fromkeys(("mae", "rmse", "r2", "bias"))
            )
        else:
            values = dict.fromkeys(
                ("accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc", "brier")
            )
            if n:
                values["accuracy"] = sk.accuracy_score(y_true, y_pred)
        return {name: metric(v, n, min_count) for name, v in values.items()}

    def confusion_matrix(classes, y_true, y_pred):  # type: ignore[no-untyped-def]
        labels = [*classes, *sorted(set(y_true) - set(classes))]
        counts = sk.confusion_matrix(y_true, y_pred, labels=labels) if len(y_true) else None
        return {"labels": labels, "counts": [] if counts is None else counts.tolist()}

    def calibration(classes, y_true, proba, bins=10):  # type: ignore[no-untyped-def]
        return {"positive": classes[1] if len(classes) == 2 else "top", "bins": []}

    def histogram(values, bins):  # type: ignore[no-untyped-def]
        counts, edges = np.histogram(values, bins=bins)
        return {"edges": edges.tolist(), "counts": counts.tolist()}

    def residuals(y_true, y_pred, bins=20):  # type: ignore[no-untyped-def]
        return (
            histogram(np.asarray(y_pred) - np.asarray(y_true), bins)
            if len(y_true)
            else {"edges": [], "counts": []}
        )

    module.METRICS = {  # type: ignore[attr-defined]
        "classification": (
            "accuracy",
            "balanced_accuracy",
            "f1_macro",
            "log_loss",
            "roc_auc",
            "brier",
        ),
        "regression": ("mae", "rmse", "r2", "bias"),
    }
    module.quality = quality  # type: ignore[attr-defined]
    module.confusion_matrix = confusion_matrix  # type: ignore[attr-defined]
    module.calibration = calibration  # type: ignore[attr-defined]
    module.histogram = histogram  # type: ignore[attr-defined]
    module.residuals = residuals  # type: ignore[attr-defined]
    return module


def ensure_metrics() -> None:
    try:
        importlib.import_module("keyed_serving.evaluation.metrics")
    except ModuleNotFoundError:
        sys.modules["keyed_serving.evaluation.metrics"] = _stand_in_metrics()
        import keyed_serving.evaluation as package

        package.metrics = sys.modules["keyed_serving.evaluation.metrics"]  # type: ignore[attr-defined]
