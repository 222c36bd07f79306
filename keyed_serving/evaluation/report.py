"""report.json: what the join gave back, scored per model version and per window of
prediction time (contract: ``schema`` 1).

    {"schema": 1, "generated", "engine", "model", "task", "classes",
     "rules": {"policy", "max_delay_s", "window", "since", "until", "min_count", "confidence"},
     "versions": {"<version>": {"predictions", "failed", "labelled", "coverage", "first",
                                "last", "metrics", "calibration" | "residuals",
                                "label_delay_s", "windows": [...]}},
     "diagnostics": {...}}

``predictions`` counts the captured rows of ``[since, until]`` (retries once, failed
included); ``labelled`` the joined pairs scored (failed predictions excluded);
``coverage`` = labelled / (predictions - failed). Versions are sorted by their first
prediction, windows by start.

The diagnostics: ``labels`` counts the label rows read (before they are grouped), so
``matched + orphan_labels`` is the number of labels after grouping; ``duplicate_labels``
and ``conflicting_labels`` are counted on the rows read, ``unknown_class_labels`` on the
labels after grouping; ``keys_predicted_more_than_once`` counts keys (with their type)
with two or more predictions of ``[since, until]``, any versions, a retry not counted;
``unlabelled_past_max_delay`` the predictions that did not fail, made ``max_delay`` or
more before ``until``, that no label joined; ``capture_drops`` the rows the capture
dropped in ``[since, until]``.
Every number is a plain JSON number, a gap ``null`` (never NaN).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import numpy as np
import pandas as pd

from keyed_serving.evaluation import metrics as measure
from keyed_serving.evaluation.join import WINDOWS, Joined, Rules
from keyed_serving.evaluation.read import MICROSECONDS, Capture, iso

SCHEMA = 1
CONFIDENCE = 0.95
DELAY_BINS = 20


def build(
    capture: Capture,
    rules: Rules,
    joined: Joined,
    *,
    engine: str,
    min_count: int = 30,
    confidence: float = CONFIDENCE,
    generated: datetime.datetime | None = None,
) -> dict[str, Any]:
    generated = generated or datetime.datetime.now(datetime.UTC)
    by_version = joined.windows.groupby("version", sort=False)
    order = sorted(
        by_version.groups, key=lambda v: (int(by_version.get_group(v)["first_us"].min()), str(v))
    )
    versions = {
        str(version): _version(
            capture,
            rules,
            str(version),
            by_version.get_group(version),
            joined.pairs[joined.pairs["version"] == version],
            joined.shares[joined.shares["version"] == version],
            min_count=min_count,
            confidence=confidence,
        )
        for version in order
    }
    report = {
        "schema": SCHEMA,
        "generated": generated.isoformat().replace("+00:00", "Z"),
        "engine": engine,
        "model": capture.model,
        "task": capture.task,
        "classes": capture.classes,
        "rules": {
            "policy": rules.policy,
            "max_delay_s": (
                rules.max_delay_us // MICROSECONDS
                if rules.max_delay_us % MICROSECONDS == 0
                else rules.max_delay_us / MICROSECONDS
            ),
            "window": rules.window,
            "since": iso(rules.since_us),
            "until": iso(rules.until_us),
            "min_count": min_count,
            "confidence": confidence,
        },
        "versions": versions,
        "diagnostics": dict(joined.diagnostics),
    }
    return plain(report)


def _version(
    capture: Capture,
    rules: Rules,
    version: str,
    windows: pd.DataFrame,
    pairs: pd.DataFrame,
    shares: pd.DataFrame,
    *,
    min_count: int,
    confidence: float,
) -> dict[str, Any]:
    classes = (
        capture.version_classes.get(version, capture.classes or []) if capture.classes else None
    )
    scored = pairs[pairs["error"].isna()]
    predictions = int(windows["predictions"].sum())
    failed = int(windows["failed"].sum())
    answered = predictions - failed

    def quality(rows: pd.DataFrame) -> dict[str, Any]:
        return quality_of(*_arrays(capture, classes, rows))

    def quality_of(y_true: Any, y_pred: Any, proba: Any) -> dict[str, Any]:
        return dict(
            measure.quality(
                capture.task,
                classes or [],
                y_true,
                y_pred,
                proba,
                min_count=min_count,
                confidence=confidence,
            )
        )

    y_true, y_pred, proba = _arrays(capture, classes, scored)
    entry: dict[str, Any] = {
        "predictions": predictions,
        "failed": failed,
        "labelled": len(scored),
        "coverage": len(scored) / answered if answered else None,
        "first": iso(int(windows["first_us"].min())),
        "last": iso(int(windows["last_us"].max())),
        "metrics": quality_of(y_true, y_pred, proba),
    }
    if capture.task == "classification":
        entry["metrics"]["confusion_matrix"] = measure.confusion_matrix(
            classes or [], y_true, y_pred
        )
        if proba is not None and len(scored):
            entry["calibration"] = measure.calibration(classes or [], y_true, proba)
    else:
        entry["residuals"] = measure.residuals(y_true, y_pred)
    entry["label_delay_s"] = _delays(scored)
    width = WINDOWS[rules.window]
    labelled = dict(iter(scored.groupby("window_us")))
    shown = dict(iter(shares.groupby("window_us")))
    entry["windows"] = []
    for row in windows.sort_values("window_us").itertuples(index=False):
        rows = labelled.get(row.window_us, scored.iloc[:0])
        entry["windows"].append(
            {
                "start": iso(int(row.window_us)),
                "end": iso(int(row.window_us) + width),
                "predictions": int(row.predictions),
                "failed": int(row.failed),
                "labelled": len(rows),
                "complete": int(row.window_us) + width + rules.max_delay_us <= rules.until_us,
                "metrics": quality(rows),
                "distribution": _distribution(
                    capture, classes, row, shown.get(row.window_us, shares.iloc[:0])
                ),
            }
        )
    return entry


def _arrays(
    capture: Capture, classes: list[str] | None, rows: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if capture.task == "regression":
        return (
            rows["label"].to_numpy(dtype=np.float64),
            rows["prediction"].to_numpy(dtype=np.float64),
            None,
        )
    y_true = np.array([str(v) for v in rows["label"]], dtype=object)
    y_pred = np.array([str(v) for v in rows["prediction"]], dtype=object)
    every = capture.classes or []
    columns = [f"p{every.index(c)}" for c in classes or []]
    if not columns or any(c not in rows.columns for c in columns):
        return y_true, y_pred, None
    proba = rows[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    if len(proba) and np.isnan(proba).all():
        return y_true, y_pred, None  # a model without probabilities
    return y_true, y_pred, proba


def _delays(scored: pd.DataFrame) -> dict[str, Any]:
    """Label delay per pair: the label's time (or, without one, when it was received)
    minus the prediction's."""
    when = scored["label_time_us"].fillna(scored["label_received_us"])
    known = when.notna().to_numpy()
    delays = (
        when[known].to_numpy(dtype=np.int64) - scored["ts_us"][known].to_numpy(dtype=np.int64)
    ) / MICROSECONDS
    if not len(delays):
        return {"edges": [], "counts": [], "median": None}
    histogram = dict(measure.histogram(delays, DELAY_BINS))
    return {**histogram, "median": float(np.median(delays))}


def _distribution(
    capture: Capture, classes: list[str] | None, row: Any, shares: pd.DataFrame
) -> dict[str, Any]:
    """What the version predicted in the window, labels or none (drift)."""
    if capture.task == "regression":
        return {name: getattr(row, name) for name in ("mean", "std", "p10", "p50", "p90")}
    total = int(shares["n"].sum())
    every = capture.classes or []
    counts = dict(zip(shares["prediction"].astype(str), shares["n"].astype(int), strict=True))
    shown = [*(classes or []), *sorted(c for c in counts if c not in (classes or []))]
    return {
        "share": {c: counts.get(c, 0) / total if total else None for c in shown},
        "mean_probability": {c: getattr(row, f"mean_p{every.index(c)}") for c in classes or []},
    }


def plain(value: Any) -> Any:
    """JSON's own types: NumPy scalars as Python numbers, NaN and pandas' gaps as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value
