"""The import check: a model must predict its whole sample through the runner's code
(``to_frame``, ``LoadedModel``) exactly as it predicts the sample itself, within the float
noise of the type it computes in; and the sample score, labels compared as labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from keyed_serving.model.fitted_types import encoded_categories, plain_value
from keyed_serving.model.predicting import IsolationBudget, LoadedModel
from keyed_serving.model.spec import (
    ImportRefused,
    ModelSpec,
    Task,
    prediction_type_of,
    to_frame,
)
from keyed_serving.schemas import FeatureInfo, Score


def check_sample(
    task: Task,
    target: str | None,
    features: list[FeatureInfo],
    classes: tuple[Any, ...] | None,
    model: Any,
    table: pd.DataFrame,
) -> np.ndarray:
    spec = ModelSpec("import:check", task, target, tuple(features), classes, None)
    return check_predicts(LoadedModel(spec, model, IsolationBudget(0, 0)), table)


def check_predicts(model: LoadedModel, table: pd.DataFrame) -> np.ndarray:
    """Predict the whole sample as the runner would (``to_frame``, ``LoadedModel``) and as
    the model does itself on the sample as read; refuse any error or difference. The
    runner's predictions."""
    names = model.spec.feature_names
    as_read = table[names]
    try:
        own = np.asarray(model.pipeline.predict(as_read))
        own_probabilities = (
            np.asarray(model.pipeline.predict_proba(as_read))
            if model.spec.task == "classification"
            else None
        )
    except Exception as exc:
        raise ImportRefused(f"the model raises on its own sample: {first_line(exc)}") from exc
    try:
        frame = to_frame({name: table[name].tolist() for name in names}, model.spec.features)
    except (TypeError, ValueError) as exc:
        raise ImportRefused(
            f"the sample cannot be given to the model as the server gives it rows (features "
            f"{[f'{f.name}: {f.type}' for f in model.spec.features]}): {first_line(exc)}"
        ) from exc
    try:
        served, probabilities = model.predict_frame(frame)
    except Exception as exc:
        changed = _changed(as_read, frame)
        raise ImportRefused(
            f"the model raises on the sample as the server gives it rows ({changed}): "
            f"{first_line(exc)}"
        ) from exc
    _refuse_values_no_encoder_knows(model.pipeline, frame)
    differing = _differing_rows(own, served)
    if own_probabilities is not None:
        differing |= _differing_rows(own_probabilities, probabilities)
    if differing:
        first = min(differing)
        raise ImportRefused(
            f"the model answers {len(differing)} of {len(table)} sample rows differently as "
            f"the server gives them ({_changed(as_read, frame)}) than as read; first, row "
            f"{first}: "
            + _difference(first, own, served, own_probabilities, probabilities, model.spec)
        )
    return served


def _refuse_values_no_encoder_knows(pipeline: Any, frame: pd.DataFrame) -> None:
    """Refuse a column of which the model's encoder knows none of the sample's values as the
    server gives them (say "yes" where it was fitted on "True", or 1.0 where it was fitted
    on text): an encoder that ignores unknown values then ignores the whole column, on the
    sample as read as well as served, so the two answers agree and are both wrong."""
    first = pipeline
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    for name, categories in encoded_categories(first).items():
        if name not in frame.columns:
            continue
        values = frame[name].dropna()
        known = set(categories.tolist())
        if len(values) and not any(v in known for v in values.unique()):
            shown = [plain_value(v) for v in categories.tolist()[:10]]
            seen = [plain_value(v) for v in values.unique()[:5]]
            raise ImportRefused(
                f"the model's encoder of column {name!r} knows {shown}, and none of the "
                f"sample's values as the server gives them ({seen} ...) is one of them: the "
                "model would ignore the column. Give the sample the values the model was "
                "fitted on"
            )


def _difference(
    row: int,
    own: np.ndarray,
    served: np.ndarray,
    own_probabilities: np.ndarray | None,
    probabilities: np.ndarray | None,
    spec: ModelSpec,
) -> str:
    """What differs in one row, as a reader can check it: the prediction, or else the
    probability that differs most, both values and by how much."""
    if row in _differing_rows(own, served) or own_probabilities is None or probabilities is None:
        return (
            f"prediction {plain_value(own[row])!r} as read, {plain_value(served[row])!r} as served"
        )
    expected = own_probabilities[row].astype(np.float64)
    gap = np.abs(probabilities[row] - expected)
    column = int(np.argmax(gap))
    label = spec.classes[column] if spec.classes is not None else column
    said = (
        f"probability of class {label}: {expected[column]:.6g} as read, "
        f"{probabilities[row][column]:.6g} as served (by {gap[column]:.1e})"
    )
    if abs(expected.sum() - 1.0) > _tolerance(own_probabilities.dtype):
        said += f"; the model's row sums to {expected.sum():.9g}, which the server renormalises"
    return said


def sample_score(task: Task, target: pd.Series, predictions: np.ndarray) -> Score | None:
    """Accuracy or R² on the sample's rows with a target: not a holdout score, and named so."""
    from sklearn.metrics import accuracy_score, r2_score

    known = target.notna().to_numpy()
    if not known.any():
        return None
    truth, predicted = target[known].tolist(), predictions[known].tolist()
    if task == "classification" or prediction_type_of(predictions) != "number":
        # A CSV's labels may read as numbers where the model's are text, and an integer
        # column with a gap reads as floats (1.0 for the model's 1): compare them as labels.
        # A model served by predict alone (--task regression) that predicts labels is
        # scored so too: R² of labels means nothing.
        return Score(
            metric="accuracy_on_import_sample",
            value=float(accuracy_score([_label(v) for v in truth], [_label(v) for v in predicted])),
        )
    try:
        value = float(r2_score(np.asarray(truth, dtype=np.float64), predicted))
    except (TypeError, ValueError) as exc:
        raise ImportRefused(f"the target column does not hold numbers: {exc}") from None
    return Score(metric="r2_on_import_sample", value=value)


def _label(value: Any) -> str:
    """A class label as the text that names it whatever the reader made of it: 1, 1.0,
    "1" and "1.0" are one label; "True" and True are one label; "yes" is itself."""
    value = plain_value(value)
    if isinstance(value, bool):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _differing_rows(expected: np.ndarray, actual: np.ndarray | None) -> set[int]:
    if actual is None or expected.shape != actual.shape:
        return set(range(len(expected)))
    if expected.dtype.kind in "fc" and actual.dtype.kind in "fc":
        # Numbers within the rounding of the type the model computes in: a model's sums may
        # differ in the last bit with the memory layout of the same values; a changed input
        # shows far above this.
        tolerance = _tolerance(expected.dtype)
        same = np.isclose(expected, actual, rtol=tolerance, atol=tolerance / 1000, equal_nan=True)
    else:
        same = expected == actual
    same = np.asarray(same, dtype=bool)
    if same.ndim > 1:
        same = same.all(axis=tuple(range(1, same.ndim)))
    return {int(i) for i in np.flatnonzero(~same)}


def _tolerance(computed_in: np.dtype[Any]) -> float:
    """Float noise in the type a model computes in: 1e-9 for float64, a few units in the
    last place of float32 (XGBoost's) or narrower types."""
    return max(1e-9, 4 * float(np.finfo(computed_in).eps)) if computed_in.kind == "f" else 1e-9


def _changed(as_read: pd.DataFrame, frame: pd.DataFrame) -> str:
    changed = [
        f"{name}: {as_read[name].dtype} -> {frame[name].dtype}"
        for name in frame.columns
        if as_read[name].dtype != frame[name].dtype
    ]
    return "columns " + ", ".join(changed) if changed else "no column type changed"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
