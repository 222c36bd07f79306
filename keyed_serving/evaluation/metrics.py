"""Model quality on labelled pairs: pure functions on arrays, no I/O, no engine.

``quality`` gives every metric of a task with a percentile-bootstrap interval; the other
functions give the report's chart data (confusion matrix, calibration bins, histograms).
The join that makes the pairs, and the counts of what it left out, are the caller's.

Inputs, as the evaluation engine hands them over:

- ``classes``: the model's classes as text (``class_text``), in its probability order.
- ``y_true``, ``y_pred``: a classifier's labels and predictions as class text (an object
  array of ``str``; ``"0"``, ``"1"`` and ``"10"`` are three classes compared as text, never
  as numbers), or a regressor's as float64.
- ``proba``: a classifier's probabilities, rows x classes in ``classes`` order, or None.

What is counted where:

- A pair whose label or prediction is missing (None, NaN) is left out of every metric
  (``n`` does not count it). The engine filters failed predictions first; this only keeps
  a stray gap from crashing the report.
- A label of a class the model does not know is a wrong answer for accuracy, balanced
  accuracy and macro F1 (its recall is 0), and is left out of the probability metrics
  (log loss, ROC AUC, Brier), which cannot score a class without a probability column;
  the caller counts such labels (``unknown_class_labels``). So is a row whose
  probabilities are not all finite numbers in [0, 1]. ``n`` of a metric counts the pairs
  it was computed on.
- ``value`` is scikit-learn's on all ``n`` pairs; None where it is not defined: n = 0,
  ROC AUC without both a positive and a negative, R² of constant labels (scikit-learn's
  ``force_finite`` would say 0.0 or 1.0, which reads as a measurement; it is not one).
- ``too_few`` below ``min_count`` pairs (or none): the value is still given, the interval
  is not.

The metrics, each from scikit-learn:

- accuracy, balanced accuracy (the mean recall of the classes that occur as labels),
  macro F1 (over the classes that occur as a label or a prediction).
- log loss (probabilities clipped to [eps, 1 - eps] as scikit-learn does).
- ROC AUC: binary, the second class's probability as the score; multiclass, one-vs-rest
  and the macro mean over the classes that occur among the labels (scikit-learn's own
  multiclass score is NaN as soon as one class has no label in a window, which would leave
  most windows of a rare class without any AUC).
- brier: the multiclass Brier score, the mean over rows of the sum over classes of
  (p - onehot)², in [0, 2]. For two classes it is twice scikit-learn's binary
  ``brier_score_loss`` (``scale_by_half=False``), so that binary and multiclass models
  read on one scale.
- mae, rmse, r2, and bias = mean(prediction - label): positive when the model
  over-predicts. A residual is prediction - label too, so bias is the residuals' mean.

The interval: a percentile bootstrap of ``resamples`` rounds, seeded, so the same inputs
and seed give the same numbers. Round r draws n row indices with replacement
(``numpy.random.default_rng(seed).integers(0, n, n)``, r-th call), over the pairs left
after dropping missing ones, and every metric is computed on that one resample (the
probability metrics on its rows that they take). A round where a metric is not defined
(a resample with no positive for ROC AUC) does not count for that metric. The rounds are
computed from the resample's row counts, as weighted sums over the rows in one pass per
metric (ROC AUC: one pass per class), not by calling scikit-learn 200 times (266x slower a
round at 10^5 pairs and 3 classes); the tests check each round against scikit-learn on the
same indices. Measured on a shared 2-core machine, 200 rounds of a million pairs: 3.8 s
binary, 7.2 s for 3 classes, 1.0 s for a regressor (10^5 pairs: 0.3, 0.6, 0.1 s). The
interval is the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of the rounds;
a percentile interval need not contain the point estimate for a skewed metric, and is
given as it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.metrics import (
    confusion_matrix as sklearn_confusion_matrix,
)
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

from keyed_serving.capture.layout import class_text
from keyed_serving.tables import is_missing

METRICS = {
    "classification": ("accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc", "brier"),
    "regression": ("mae", "rmse", "r2", "bias"),
}
PROBABILITY_METRICS = ("log_loss", "roc_auc", "brier")


class Metric(TypedDict):
    value: float | None
    low: float | None
    high: float | None
    n: int
    too_few: bool


def quality(
    task: str,
    classes: Sequence[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    *,
    min_count: int = 30,
    confidence: float = 0.95,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, Metric]:
    """Every metric of ``task`` (``METRICS[task]``, in that order) on the pairs, each with
    its bootstrap interval. See the module's text for what each one is and counts."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if task == "classification":
        plan = _classification_plan(classes, y_true, y_pred, proba)
    elif task == "regression":
        plan = _regression_plan(y_true, y_pred)
    else:
        raise ValueError(f"task must be classification or regression, not {task!r}")
    wanted = [
        name
        for name in METRICS[task]
        if not _too_few(plan.counts[name], min_count) and plan.values[name] is not None
    ]
    rounds = _bootstrap(plan.rows, plan.statistics, wanted, resamples, seed)
    low_q, high_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    metrics: dict[str, Metric] = {}
    for name in METRICS[task]:
        low = high = None
        if name in rounds:
            defined = rounds[name][np.isfinite(rounds[name])]
            if defined.size:
                low, high = (_number(q) for q in np.percentile(defined, [low_q, high_q]))
        n = plan.counts[name]
        metrics[name] = Metric(
            value=plan.values[name], low=low, high=high, n=n, too_few=_too_few(n, min_count)
        )
    return metrics


def confusion_matrix(
    classes: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray
) -> dict[str, Any]:
    """Counts of (label, prediction), rows = label, columns = prediction. ``labels`` are
    the model's classes in its order, then any other class seen among the labels (or
    predictions), sorted as text. Pairs with a missing label or prediction are left out."""
    coded = _encode(classes, y_true, y_pred)
    size = len(coded.labels)
    counts = np.zeros((size, size), dtype=np.int64)
    if coded.true.size:  # scikit-learn refuses no pairs
        counts = sklearn_confusion_matrix(coded.true, coded.pred, labels=np.arange(size))
    return {"labels": list(coded.labels), "counts": counts.astype(int).tolist()}


def calibration(
    classes: Sequence[str], y_true: np.ndarray, proba: np.ndarray | None, bins: int = 10
) -> dict[str, Any]:
    """Reliability bins. Binary: the second class's probability against whether the label
    is that class (``positive`` names it). Multiclass: the top probability against whether
    its class is the label (``positive`` is ``"top"``). Bins are ``bins`` equal widths of
    [0, 1], assigned as scikit-learn's ``calibration_curve`` does (a value on an edge goes
    to the lower bin); only bins with rows are listed, each with the mean predicted
    probability, the observed share and its row count. Rows of labels the model does not
    know, or with probabilities that are not finite numbers in [0, 1], are left out (all
    of them when there are no probabilities)."""
    names = [str(name) for name in classes]
    labels = _as_text(y_true)
    missing = np.asarray(pd.isna(labels), dtype=bool)
    true = _codes_of(names, labels)
    rows = ~missing & (true >= 0) & _probability_rows(proba, len(names), len(labels))
    probabilities = (
        np.asarray(proba, dtype=np.float64)[rows]
        if proba is not None
        else np.empty((0, len(names)))
    )
    true = true[rows]
    if len(names) == 2:
        positive, score, hit = names[1], probabilities[:, 1], true == 1
    else:
        positive = "top"
        score = probabilities.max(axis=1) if probabilities.size else np.empty(0)
        hit = probabilities.argmax(axis=1) == true if probabilities.size else np.empty(0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_of = np.searchsorted(edges[1:-1], score)
    rows_in = np.bincount(bin_of, minlength=bins)
    predicted = np.bincount(bin_of, weights=score, minlength=bins)
    observed = np.bincount(bin_of, weights=hit.astype(np.float64), minlength=bins)
    return {
        "positive": positive,
        "bins": [
            {
                "mean_predicted": float(predicted[b] / rows_in[b]),
                "observed": float(observed[b] / rows_in[b]),
                "n": int(rows_in[b]),
            }
            for b in range(bins)
            if rows_in[b]
        ],
    }


def residuals(y_true: np.ndarray, y_pred: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """Histogram of prediction - label (positive: over-predicted), ``bins`` equal widths
    over their range; pairs with a missing or infinite side are left out."""
    true = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(y_pred, dtype=np.float64)
    return histogram(predicted - true, bins)


def histogram(values: np.ndarray, bins: int | Sequence[float]) -> dict[str, Any]:
    """Counts of the finite values in ``bins`` equal widths over their range, or between
    the given edges (values outside them are not counted, the last bin holds its upper
    edge: numpy's rule). No values and a number of bins: no edges and no counts."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if isinstance(bins, int) and not data.size:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(data, bins=bins if isinstance(bins, int) else np.asarray(bins))
    return {"edges": [float(edge) for edge in edges], "counts": counts.astype(int).tolist()}


# -- the pairs, coded ---------------------------------------------------------------------


@dataclass
class _Coded:
    """Labels and predictions as codes into ``labels`` (the model's classes first, so a
    code below ``known`` is a class the model has a probability for)."""

    true: np.ndarray  # int64
    pred: np.ndarray  # int64
    labels: list[str]
    known: int
    kept: np.ndarray  # bool, over the input rows: neither side missing


def _encode(classes: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray) -> _Coded:
    names = [str(name) for name in classes]
    labels, predictions = _as_text(y_true), _as_text(y_pred)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    kept = ~(np.asarray(pd.isna(labels), dtype=bool) | np.asarray(pd.isna(predictions), dtype=bool))
    labels, predictions = labels[kept], predictions[kept]
    true, pred = _codes_of(names, labels), _codes_of(names, predictions)
    others = sorted(set(labels[true < 0].tolist()) | set(predictions[pred < 0].tolist()))
    if others:
        every = [*names, *others]
        true, pred = _codes_of(every, labels), _codes_of(every, predictions)
        names = every
    return _Coded(true, pred, names, len(classes), kept)


def _as_text(values: np.ndarray) -> np.ndarray:
    """Class text as an object array of str (None where missing). Anything that is not a
    str already (a caller's integer labels) goes through ``class_text``, so 1 meets "1"."""
    array = np.asarray(values)
    if array.dtype.kind in "US":
        return array.astype(str).astype(object)
    array = array.astype(object)
    if not all(type(value) is str for value in array):
        array = np.array(
            [
                value if type(value) is str or is_missing(value) else class_text(value)
                for value in array
            ],
            dtype=object,
        )
    return array


def _codes_of(names: list[str], values: np.ndarray) -> np.ndarray:
    # a hash lookup (pandas), not a sort of a million strings; -1 where not among names
    index = pd.Index(np.asarray(names, dtype=object), dtype=object)
    return np.asarray(index.get_indexer(values), dtype=np.int64)


def _probability_rows(proba: np.ndarray | None, width: int, rows: int) -> np.ndarray:
    """Rows whose probabilities are all finite and in [0, 1]; none without probabilities."""
    if proba is None:
        return np.zeros(rows, dtype=bool)
    probabilities = np.asarray(proba, dtype=np.float64)
    if probabilities.shape != (rows, width):
        raise ValueError(
            f"probabilities of shape {probabilities.shape}, expected ({rows}, {width})"
        )
    with np.errstate(invalid="ignore"):
        return np.all((probabilities >= 0) & (probabilities <= 1), axis=1)


# -- the plans: point values, and the statistic of one resample ---------------------------


@dataclass
class _Plan:
    rows: int  # the pairs a resample draws from
    values: dict[str, float | None]  # scikit-learn's, on all of them
    counts: dict[str, int]  # n of each metric
    statistics: Callable[[np.ndarray, list[str]], dict[str, float]]  # row counts -> metrics


def _classification_plan(
    classes: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None
) -> _Plan:
    coded = _encode(classes, y_true, y_pred)
    n, size, known = coded.true.size, len(coded.labels), coded.known
    valid = _probability_rows(proba, known, coded.kept.size)[coded.kept]
    scored = np.flatnonzero(valid & (coded.true < known))  # rows the probability metrics take
    probabilities = (
        np.asarray(proba, dtype=np.float64)[coded.kept][scored]
        if proba is not None
        else np.empty((0, known))
    )
    true_scored = coded.true[scored]

    values: dict[str, float | None] = dict.fromkeys(METRICS["classification"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases are None here, not warnings
        if n:
            values["accuracy"] = _number(accuracy_score(coded.true, coded.pred))
            values["balanced_accuracy"] = _number(balanced_accuracy_score(coded.true, coded.pred))
            values["f1_macro"] = _number(
                f1_score(coded.true, coded.pred, average="macro", zero_division=0.0)
            )
        if scored.size and known >= 2:
            labels = np.arange(known)
            values["log_loss"] = _number(log_loss(true_scored, probabilities, labels=labels))
            values["brier"] = _number(
                brier_score_loss(true_scored, probabilities, labels=labels, scale_by_half=False)
            )
            values["roc_auc"] = _roc_auc(true_scored, probabilities)
    counts = {name: n for name in METRICS["classification"]}
    counts.update(dict.fromkeys(PROBABILITY_METRICS, int(scored.size)))

    # per row (of all n), what a resample's weighted sums need; rows the probability
    # metrics do not take weigh nothing there, so a round gathers nothing
    correct = (coded.true == coded.pred).astype(np.float64)
    cell = coded.true * size + coded.pred
    taken = np.zeros(n)
    taken[scored] = 1.0
    row_log_loss, row_brier = np.zeros(n), np.zeros(n)
    ranks = None
    if scored.size and known >= 2:
        eps = np.finfo(np.float64).eps
        chosen = probabilities[np.arange(scored.size), true_scored]
        row_log_loss[scored] = -np.log(np.clip(chosen, eps, 1 - eps))
        onehot = np.zeros_like(probabilities)
        onehot[np.arange(scored.size), true_scored] = 1.0
        row_brier[scored] = ((probabilities - onehot) ** 2).sum(axis=1)
        ranks = _RocRanks(n, scored, true_scored, probabilities)

    def statistics(weights: np.ndarray, names: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        if "accuracy" in names:
            out["accuracy"] = float(weights @ correct) / n
        if "balanced_accuracy" in names or "f1_macro" in names:
            table = np.bincount(cell, weights=weights, minlength=size * size).reshape(size, size)
            hits, label_totals, prediction_totals = (
                np.diag(table),
                table.sum(axis=1),
                table.sum(axis=0),
            )
            occurring = label_totals > 0
            out["balanced_accuracy"] = float(np.mean(hits[occurring] / label_totals[occurring]))
            either = occurring | (prediction_totals > 0)
            f1 = 2 * hits[either] / (label_totals[either] + prediction_totals[either])
            out["f1_macro"] = float(np.mean(f1))
        total = float(weights @ taken) if scored.size else 0.0
        if total and "log_loss" in names:
            out["log_loss"] = float(weights @ row_log_loss) / total
        if total and "brier" in names:
            out["brier"] = float(weights @ row_brier) / total
        if total and ranks is not None and "roc_auc" in names:
            out["roc_auc"] = ranks.auc(weights)
        return out

    return _Plan(n, values, counts, statistics)


def _roc_auc(true: np.ndarray, probabilities: np.ndarray) -> float | None:
    width = probabilities.shape[1]
    if width == 2:
        both = 0 < np.count_nonzero(true == 1) < true.size
        return _number(roc_auc_score(true == 1, probabilities[:, 1])) if both else None
    scores = [
        roc_auc_score(true == column, probabilities[:, column])
        for column in range(width)
        if 0 < np.count_nonzero(true == column) < true.size
    ]
    return _number(np.mean(scores)) if scores else None


class _RocRanks:
    """ROC AUC of a resample from its row weights, as the weighted Mann-Whitney count (a
    tie counts a half), which is the area under scikit-learn's weighted ROC curve. Each
    one-vs-rest column ranks its distinct scores once; a round then sums the weights of
    negatives and positives per score in one ``bincount`` over the rows (no sort, no
    gather), and counts the negatives below each positive with a cumulative sum."""

    def __init__(
        self, rows: int, scored: np.ndarray, true: np.ndarray, probabilities: np.ndarray
    ) -> None:
        columns = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
        self.columns: list[tuple[np.ndarray, int]] = []
        for column in columns:
            distinct, rank = np.unique(probabilities[:, column], return_inverse=True)
            # negatives by rank of score, then positives by rank, then rows not scored: two
            # contiguous halves, which a cumulative sum reads 1.5x faster than interleaved
            bin_of = np.full(rows, 2 * distinct.size, dtype=np.int64)
            bin_of[scored] = rank.reshape(-1) + distinct.size * (true == column)
            self.columns.append((bin_of, distinct.size))

    def auc(self, weights: np.ndarray) -> float:
        areas = []
        for bin_of, scores in self.columns:
            table = np.bincount(bin_of, weights=weights, minlength=2 * scores + 1)
            negatives, positives = table[:scores], table[scores : 2 * scores]
            total_positive, total_negative = positives.sum(), negatives.sum()
            if total_positive and total_negative:
                # negatives at or below each positive's score, less half of those tied
                wins = positives @ np.cumsum(negatives) - (positives @ negatives) / 2
                areas.append(float(wins) / (total_positive * total_negative))
        return float(np.mean(areas)) if areas else math.nan


def _regression_plan(y_true: np.ndarray, y_pred: np.ndarray) -> _Plan:
    true = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(y_pred, dtype=np.float64)
    if true.shape != predicted.shape:
        raise ValueError(f"{true.size} labels but {predicted.size} predictions")
    kept = np.isfinite(true) & np.isfinite(predicted)
    true, predicted = true[kept], predicted[kept]
    n = true.size
    values: dict[str, float | None] = dict.fromkeys(METRICS["regression"])
    if n:
        values["mae"] = _number(mean_absolute_error(true, predicted))
        values["rmse"] = _number(root_mean_squared_error(true, predicted))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values["r2"] = _number(r2_score(true, predicted, force_finite=False)) if n > 1 else None
        values["bias"] = _number(np.mean(predicted - true))
    error = predicted - true
    error_squared, error_size = error**2, np.abs(error)
    centred = true - true.mean() if n else true  # sums of squares without cancellation
    centred_squared = centred**2

    def statistics(weights: np.ndarray, names: list[str]) -> dict[str, float]:
        squared = float(weights @ error_squared)
        out = {
            "mae": float(weights @ error_size) / n,
            "rmse": math.sqrt(squared / n),
            "bias": float(weights @ error) / n,
        }
        if "r2" in names:
            spread = float(weights @ centred_squared)
            total = spread - float(weights @ centred) ** 2 / n
            # a resample of equal labels leaves rounding dust, not a spread
            out["r2"] = 1 - squared / total if total > 1e-10 * spread else math.nan
        return out

    return _Plan(n, values, dict.fromkeys(METRICS["regression"], n), statistics)


# -- the bootstrap -------------------------------------------------------------------------


def _bootstrap(
    rows: int,
    statistics: Callable[[np.ndarray, list[str]], dict[str, float]],
    names: list[str],
    resamples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Each metric of ``names`` on ``resamples`` resamples of the rows (NaN where a round
    leaves it undefined). One draw of indices per round serves every metric."""
    if not names or not rows:
        return {}
    generator = np.random.default_rng(seed)
    rounds = {name: np.full(resamples, math.nan) for name in names}
    # A round is a few dot products of a million rows; OpenBLAS's threads for them cost
    # more than they gain (one thread: half the time of two on a shared 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        for round_ in range(resamples):
            draw = generator.integers(0, rows, rows)
            weights = np.bincount(draw, minlength=rows).astype(np.float64)
            for name, value in statistics(weights, names).items():
                if name in rounds:
                    rounds[name][round_] = value
    return rounds


def _too_few(n: int, min_count: int) -> bool:
    return n == 0 or n < min_count


def _number(value: Any) -> float | None:
    """A JSON number, or None for what is not one (NaN, infinities)."""
    number = float(value)
    return number if math.isfinite(number) else None
