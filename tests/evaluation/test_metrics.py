"""keyed-evaluate's metrics: each value against an independent computation (numpy written
out here, or scikit-learn called directly on the same arrays), each bootstrap round against
scikit-learn on the same resampled indices, and the edge cases the module names."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    r2_score,
    roc_auc_score,
)
from threadpoolctl import threadpool_limits

from keyed_serving.evaluation.metrics import (
    METRICS,
    calibration,
    confusion_matrix,
    histogram,
    quality,
    residuals,
)

EPS = np.finfo(np.float64).eps


# -- data ----------------------------------------------------------------------------------


def classified(
    n: int, classes: list[str], seed: int = 1, skill: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predictions (the top class) and probabilities of a model that is right more
    often than chance."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(classes), n)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), truth] += skill
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = np.array(classes, dtype=object)
    return names[truth], names[proba.argmax(axis=1)], proba


def regressed(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(10, 3, n)
    return truth, truth + rng.normal(0.5, 1.0, n)


def text(*values: str | None) -> np.ndarray:
    return np.array(values, dtype=object)


# -- independent computations, written out --------------------------------------------------


def recall_mean(true: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[true == c] == c) for c in sorted(set(true))]))


def f1_mean(true: np.ndarray, pred: np.ndarray) -> float:
    scores = []
    for c in sorted(set(true) | set(pred)):
        tp = np.sum((true == c) & (pred == c))
        fp = np.sum((true != c) & (pred == c))
        fn = np.sum((true == c) & (pred != c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def pairwise_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, a half for a tie."""
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def onehot(true: np.ndarray, classes: list[str]) -> np.ndarray:
    return (true[:, None] == np.array(classes, dtype=object)[None, :]).astype(float)


def value(metrics: dict[str, Any], name: str) -> float:
    number = metrics[name]["value"]
    assert number is not None, name
    return float(number)


# -- point values ---------------------------------------------------------------------------


def test_binary_metrics_equal_their_definitions_written_out() -> None:
    classes = ["no", "yes"]
    true, pred, proba = classified(300, classes)
    proba[:20, 1] = proba[20:40, 1]  # ties across both classes in the AUC
    proba[:20, 0] = 1 - proba[:20, 1]
    got = quality("classification", classes, true, pred, proba)

    assert list(got) == list(METRICS["classification"])
    assert value(got, "accuracy") == pytest.approx(np.mean(true == pred), abs=1e-12)
    assert value(got, "balanced_accuracy") == pytest.approx(recall_mean(true, pred), abs=1e-12)
    assert value(got, "f1_macro") == pytest.approx(f1_mean(true, pred), abs=1e-12)
    chosen = proba[np.arange(300), (true == "yes").astype(int)]
    assert value(got, "log_loss") == pytest.approx(-np.mean(np.log(chosen)), rel=1e-12)
    assert value(got, "roc_auc") == pytest.approx(pairwise_auc(true == "yes", proba[:, 1]))
    brier = np.mean(((proba - onehot(true, classes)) ** 2).sum(axis=1))
    assert value(got, "brier") == pytest.approx(brier, rel=1e-12)
    # the multiclass Brier score: twice scikit-learn's binary one
    binary = brier_score_loss(true == "yes", proba[:, 1])
    assert value(got, "brier") == pytest.approx(2 * binary, rel=1e-12)
    assert all(got[name]["n"] == 300 and not got[name]["too_few"] for name in got)


def test_multiclass_metrics_equal_their_definitions_written_out() -> None:
    classes = ["setosa", "versicolor", "virginica"]
    true, pred, proba = classified(400, classes, skill=0.8)
    got = quality("classification", classes, true, pred, proba)

    assert value(got, "accuracy") == pytest.approx(np.mean(true == pred), abs=1e-12)
    assert value(got, "balanced_accuracy") == pytest.approx(recall_mean(true, pred), abs=1e-12)
    assert value(got, "f1_macro") == pytest.approx(f1_mean(true, pred), abs=1e-12)
    chosen = (proba * onehot(true, classes)).sum(axis=1)
    assert value(got, "log_loss") == pytest.approx(-np.mean(np.log(chosen)), rel=1e-12)
    one_vs_rest = [pairwise_auc(true == c, proba[:, i]) for i, c in enumerate(classes)]
    assert value(got, "roc_auc") == pytest.approx(np.mean(one_vs_rest), rel=1e-12)
    assert value(got, "roc_auc") == pytest.approx(
        roc_auc_score(true, proba, multi_class="ovr", average="macro", labels=classes)
    )
    brier = np.mean(((proba - onehot(true, classes)) ** 2).sum(axis=1))
    assert value(got, "brier") == pytest.approx(brier, rel=1e-12)


def test_regression_metrics_equal_their_definitions_written_out() -> None:
    true, pred = regressed(500)
    got = quality("regression", [], true, pred, None)

    assert list(got) == list(METRICS["regression"])
    error = pred - true
    assert value(got, "mae") == pytest.approx(np.mean(np.abs(error)), rel=1e-12)
    assert value(got, "rmse") == pytest.approx(math.sqrt(np.mean(error**2)), rel=1e-12)
    spread = np.sum((true - true.mean()) ** 2)
    assert value(got, "r2") == pytest.approx(1 - np.sum(error**2) / spread, rel=1e-12)
    assert value(got, "bias") == pytest.approx(np.mean(error), rel=1e-12)
    assert value(got, "bias") > 0  # the model over-predicts by 0.5: bias is prediction - label


def test_tiny_hand_checked_classification() -> None:
    # labels a a b b, predictions a b b b; P(b) .2 .6 .7 .4 -> hand-computed values
    got = quality(
        "classification",
        ["a", "b"],
        text("a", "a", "b", "b"),
        text("a", "b", "b", "b"),
        np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]]),
        min_count=1,
    )
    assert value(got, "accuracy") == 0.75
    assert value(got, "balanced_accuracy") == 0.75  # recalls 1/2 and 1
    assert value(got, "f1_macro") == pytest.approx((2 / 3 + 0.8) / 2)
    assert value(got, "roc_auc") == 0.75  # b's .7 beats both a's, b's .4 beats only .2
    assert value(got, "log_loss") == pytest.approx(
        -(math.log(0.8) + math.log(0.4) + math.log(0.7) + math.log(0.4)) / 4
    )
    assert value(got, "brier") == pytest.approx((0.08 + 0.72 + 0.18 + 0.72) / 4)


# -- the bootstrap -------------------------------------------------------------------------


def resampled(n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """The indices each round draws, as the module documents them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(resamples)]


def percentiles(rounds: list[float], confidence: float) -> tuple[float, float]:
    defined = np.array([r for r in rounds if math.isfinite(r)])
    low, high = np.percentile(defined, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
    return float(low), float(high)


def sklearn_classification(
    classes: list[str], true: np.ndarray, pred: np.ndarray, proba: np.ndarray
) -> dict[str, float]:
    """Each metric by scikit-learn on one resample, its probability metrics on the rows
    with a known label and usable probabilities."""
    scores = {
        "accuracy": float(np.mean(true == pred)),
        "balanced_accuracy": balanced_accuracy_score(true, pred),
        "f1_macro": f1_score(true, pred, average="macro", zero_division=0.0),
    }
    usable = np.isin(true, classes) & np.all(np.isfinite(proba), axis=1)
    t, p = true[usable], proba[usable]
    scores["log_loss"] = log_loss(t, p, labels=classes) if t.size else math.nan
    scores["brier"] = (
        brier_score_loss(t, p, labels=classes, scale_by_half=False) if t.size else math.nan
    )
    if len(classes) == 2:
        both = 0 < np.sum(t == classes[1]) < t.size
        scores["roc_auc"] = roc_auc_score(t == classes[1], p[:, 1]) if both else math.nan
    else:
        aucs = [
            roc_auc_score(t == c, p[:, i])
            for i, c in enumerate(classes)
            if 0 < np.sum(t == c) < t.size
        ]
        scores["roc_auc"] = float(np.mean(aucs)) if aucs else math.nan
    return scores


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize(
    ("classes", "never_labelled"),
    [(["0", "1"], None), (["0", "1", "10"], None), (["0", "1", "10"], "10")],
)
def test_each_bootstrap_round_is_scikit_learns_metric_on_the_same_indices(
    classes: list[str], never_labelled: str | None
) -> None:
    true, pred, proba = classified(90, classes, seed=3, skill=0.7)
    if never_labelled:  # a class predicted but never a label: in macro F1, not in ROC AUC
        true[true == never_labelled] = classes[0]
        assert np.any(pred == never_labelled)
    true[5] = "2"  # a class the model does not know: wrong, and out of the probability metrics
    proba[7] = np.nan  # a row without usable probabilities
    proba[10:30] = proba[10]  # ties in every column
    got = quality(
        "classification", classes, true, pred, proba, resamples=40, seed=7, confidence=0.9
    )

    rounds = [
        sklearn_classification(classes, true[idx], pred[idx], proba[idx])
        for idx in resampled(90, 40, 7)
    ]
    for name in METRICS["classification"]:
        low, high = percentiles([r[name] for r in rounds], 0.9)
        assert got[name]["low"] == pytest.approx(low, rel=1e-9), name
        assert got[name]["high"] == pytest.approx(high, rel=1e-9), name
    assert got["accuracy"]["n"] == 90 and got["log_loss"]["n"] == 88


def test_each_regression_round_is_scikit_learns_metric_on_the_same_indices() -> None:
    true, pred = regressed(70, seed=4)
    got = quality("regression", [], true, pred, None, resamples=50, seed=11)

    rounds = []
    for idx in resampled(70, 50, 11):
        t, p = true[idx], pred[idx]
        rounds.append(
            {
                "mae": np.mean(np.abs(p - t)),
                "rmse": math.sqrt(np.mean((p - t) ** 2)),
                "r2": r2_score(t, p),
                "bias": np.mean(p - t),
            }
        )
    for name in METRICS["regression"]:
        low, high = percentiles([r[name] for r in rounds], 0.95)
        assert got[name]["low"] == pytest.approx(low, rel=1e-9), name
        assert got[name]["high"] == pytest.approx(high, rel=1e-9), name


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_interval_holds_the_value_and_narrows_as_pairs_grow(task: str) -> None:
    def metrics(n: int) -> dict[str, Any]:
        if task == "regression":
            true, pred = regressed(n, seed=5)
            return quality("regression", [], true, pred, None)
        classes = ["a", "b"] if task == "binary" else ["a", "b", "c"]
        true, pred, proba = classified(n, classes, seed=5)
        return quality("classification", classes, true, pred, proba)

    few, many = metrics(200), metrics(5_000)
    for name, small in few.items():
        large = many[name]
        assert small["low"] <= small["value"] <= small["high"], name
        assert large["low"] <= large["value"] <= large["high"], name
        assert large["high"] - large["low"] < (small["high"] - small["low"]) / 2, name


def test_same_inputs_and_seed_give_the_same_numbers_and_another_seed_does_not() -> None:
    classes = ["x", "y", "z"]
    true, pred, proba = classified(500, classes)
    first = quality("classification", classes, true, pred, proba, seed=3)
    again = quality("classification", classes, true.copy(), pred.copy(), proba.copy(), seed=3)
    other = quality("classification", classes, true, pred, proba, seed=4)
    assert first == again
    assert all(first[name]["value"] == other[name]["value"] for name in first)
    assert any(first[name]["low"] != other[name]["low"] for name in first)


def test_the_numbers_do_not_depend_on_how_many_threads_blas_may_use() -> None:
    # threaded dot products sum in another order: the last bits would follow the machine
    classes = ["a", "b", "c"]
    true, pred, proba = classified(60_000, classes)
    results = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            results.append(quality("classification", classes, true, pred, proba, resamples=20))
    assert results[0] == results[1]


def test_the_confidence_level_widens_the_interval() -> None:
    true, pred = regressed(300)
    narrow = quality("regression", [], true, pred, None, confidence=0.5)["mae"]
    wide = quality("regression", [], true, pred, None, confidence=0.99)["mae"]
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


# -- edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_no_pairs_give_no_values_and_too_few(task: str) -> None:
    empty = np.array([], dtype=object if task == "classification" else np.float64)
    proba = np.empty((0, 2)) if task == "classification" else None
    got = quality(task, ["a", "b"], empty, empty, proba)
    assert list(got) == list(METRICS[task])
    for metric in got.values():
        assert metric == {"value": None, "low": None, "high": None, "n": 0, "too_few": True}


def test_fewer_pairs_than_the_minimum_give_a_value_but_no_interval() -> None:
    true, pred, proba = classified(29, ["a", "b"])
    got = quality("classification", ["a", "b"], true, pred, proba, min_count=30)
    for name, metric in got.items():
        assert metric["n"] == 29 and metric["too_few"], name
        assert metric["value"] is not None and metric["low"] is metric["high"] is None, name
    enough = quality("classification", ["a", "b"], true, pred, proba, min_count=29)
    assert all(not metric["too_few"] and metric["low"] is not None for metric in enough.values())


@pytest.mark.parametrize("classes", [["a", "b"], ["a", "b", "c"]])
def test_one_class_among_the_labels_has_no_roc_auc(classes: list[str]) -> None:
    true = np.array(["b"] * 50, dtype=object)
    pred = np.array(["b"] * 40 + ["a"] * 10, dtype=object)
    proba = np.full((50, len(classes)), 1 / len(classes))
    got = quality("classification", classes, true, pred, proba)
    assert got["roc_auc"]["value"] is None and got["roc_auc"]["low"] is None
    assert got["roc_auc"]["n"] == 50
    assert value(got, "accuracy") == 0.8
    assert value(got, "log_loss") == pytest.approx(math.log(len(classes)))


def test_a_multiclass_window_missing_a_class_averages_the_classes_it_has() -> None:
    classes = ["a", "b", "c"]
    true, pred, proba = classified(200, classes, seed=2)
    has = true != "c"
    got = quality("classification", classes, true[has], pred[has], proba[has])
    t, p = true[has], proba[has]
    expected = np.mean([pairwise_auc(t == "a", p[:, 0]), pairwise_auc(t == "b", p[:, 1])])
    assert value(got, "roc_auc") == pytest.approx(expected, rel=1e-12)


def test_labels_of_a_class_the_model_does_not_know_are_wrong_and_not_in_probability_metrics() -> (
    None
):
    classes = ["0", "1"]
    true, pred, proba = classified(100, classes, seed=6)
    true[:10] = "7"
    got = quality("classification", classes, true, pred, proba)

    assert value(got, "accuracy") == pytest.approx(np.mean(true == pred))
    assert value(got, "balanced_accuracy") == pytest.approx(recall_mean(true, pred))
    assert value(got, "f1_macro") == pytest.approx(f1_mean(true, pred))
    assert got["accuracy"]["n"] == 100
    known = slice(10, None)
    assert got["log_loss"]["n"] == got["roc_auc"]["n"] == got["brier"]["n"] == 90
    assert value(got, "log_loss") == pytest.approx(
        log_loss(true[known], proba[known], labels=classes)
    )
    assert value(got, "roc_auc") == pytest.approx(pairwise_auc(true[known] == "1", proba[known, 1]))
    matrix = confusion_matrix(classes, true, pred)
    assert matrix["labels"] == ["0", "1", "7"]
    assert sum(matrix["counts"][2]) == 10 and matrix["counts"][0][2] == 0  # "7" never predicted


def test_nan_probabilities_are_left_out_of_the_probability_metrics_only() -> None:
    classes = ["a", "b"]
    true, pred, proba = classified(60, classes, seed=8)
    proba[:5] = np.nan
    proba[5, 0] = np.inf
    got = quality("classification", classes, true, pred, proba)
    assert got["accuracy"]["n"] == 60 and got["log_loss"]["n"] == 54
    assert value(got, "brier") == pytest.approx(
        np.mean(((proba[6:] - onehot(true[6:], classes)) ** 2).sum(axis=1))
    )

    proba[:] = np.nan
    nothing = quality("classification", classes, true, pred, proba)
    for name in ("log_loss", "roc_auc", "brier"):
        assert nothing[name] == {"value": None, "low": None, "high": None, "n": 0, "too_few": True}
    assert nothing["accuracy"]["value"] is not None
    assert calibration(classes, true, proba)["bins"] == []


def test_a_classifier_without_probabilities_has_only_the_label_metrics() -> None:
    true, pred, _ = classified(60, ["a", "b"])
    got = quality("classification", ["a", "b"], true, pred, None)
    assert got["accuracy"]["value"] is not None and got["accuracy"]["low"] is not None
    assert got["roc_auc"] == {"value": None, "low": None, "high": None, "n": 0, "too_few": True}
    assert calibration(["a", "b"], true, None) == {"positive": "b", "bins": []}


def test_missing_labels_or_predictions_are_left_out() -> None:
    true = text("a", None, "b", "a")
    pred = np.array(["a", "b", float("nan"), "b"], dtype=object)
    got = quality("classification", ["a", "b"], true, pred, None, min_count=1)
    assert got["accuracy"]["n"] == 2 and value(got, "accuracy") == 0.5
    assert confusion_matrix(["a", "b"], true, pred)["counts"] == [[1, 1], [0, 0]]

    regression = quality(
        "regression", [], np.array([1.0, np.nan, 3.0]), np.array([2.0, 2.0, np.inf]), None
    )
    assert regression["mae"]["n"] == 1 and value(regression, "mae") == 1.0


def test_constant_labels_have_no_r2_but_the_other_regression_metrics() -> None:
    true = np.full(50, 3.0)
    pred = true + np.linspace(-1, 1, 50)
    got = quality("regression", [], true, pred, None)
    assert got["r2"]["value"] is None and got["r2"]["low"] is None and got["r2"]["n"] == 50
    assert value(got, "mae") == pytest.approx(np.mean(np.abs(pred - true)))
    assert got["mae"]["low"] is not None
    # and a perfect model of constant labels is no R² of 1.0 either
    assert quality("regression", [], true, true, None)["r2"]["value"] is None


def test_mostly_constant_labels_leave_resamples_of_one_value_out_of_r2() -> None:
    # a third of the resamples draw only the 0.1s; their spread computes as 0 or +-5e-17
    true = np.array([0.1] * 39 + [4.1])
    pred = true + 0.1
    got = quality("regression", [], true, pred, None, resamples=200)
    assert got["r2"]["value"] is not None
    assert got["r2"]["low"] is not None and got["r2"]["low"] > -10  # no rounding-dust spread


def test_integer_looking_class_texts_stay_text() -> None:
    classes = ["0", "1", "10"]
    true = text("0", "1", "10", "10", "2", "100")
    pred = text("0", "10", "10", "1", "1", "0")
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]] * 2)
    got = quality("classification", classes, true, pred, proba, min_count=1)
    assert value(got, "accuracy") == pytest.approx(2 / 6)
    assert got["log_loss"]["n"] == 4
    matrix = confusion_matrix(classes, true, pred)
    assert matrix["labels"] == ["0", "1", "10", "100", "2"]  # the model's order, then as text
    assert matrix["counts"] == [
        [1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
    ]


def test_numbers_given_as_labels_meet_their_class_text() -> None:
    classes = ["0", "1", "10"]
    got = quality(
        "classification",
        classes,
        np.array([0, 1, 10, 10]),
        np.array(["0", "1", "1", "10"], dtype=object),
        None,
        min_count=1,
    )
    assert value(got, "accuracy") == 0.75
    assert confusion_matrix(classes, np.array([1.0, 10.0]), text("1", "10"))["counts"] == [
        [0, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
    ]


def test_a_wrong_task_or_probability_shape_is_refused() -> None:
    true, pred, proba = classified(10, ["a", "b"])
    with pytest.raises(ValueError, match="task"):
        quality("ranking", ["a", "b"], true, pred, proba)
    with pytest.raises(ValueError, match="shape"):
        quality("classification", ["a", "b", "c"], true, pred, proba)
    with pytest.raises(ValueError, match="confidence"):
        quality("classification", ["a", "b"], true, pred, proba, confidence=1.0)


def test_every_result_is_plain_json() -> None:
    classes = ["a", "b"]
    true, pred, proba = classified(40, classes)
    proba[0] = np.nan
    documents = [
        quality("classification", classes, true, pred, proba),
        quality("classification", classes, true[:0], pred[:0], proba[:0]),
        quality("regression", [], np.full(40, 1.0), np.full(40, 1.0), None),
        confusion_matrix(classes, true, pred),
        calibration(classes, true, proba),
        residuals(np.arange(5.0), np.arange(5.0) + 1),
        histogram(np.array([]), 5),
    ]
    for document in documents:
        assert json.loads(json.dumps(document, allow_nan=False)) == document


# -- chart data ------------------------------------------------------------------------------


def test_confusion_matrix_rows_are_labels_and_columns_predictions() -> None:
    matrix = confusion_matrix(["b", "a"], text("a", "a", "b", "a"), text("a", "b", "b", "a"))
    assert matrix == {"labels": ["b", "a"], "counts": [[1, 0], [1, 2]]}
    assert confusion_matrix(["b", "a"], text(), text()) == {
        "labels": ["b", "a"],
        "counts": [[0, 0], [0, 0]],
    }


def test_binary_calibration_is_scikit_learns_curve_with_counts() -> None:
    classes = ["neg", "pos"]
    true, _, proba = classified(1_000, classes, seed=9)
    proba[:3, 1] = [0.1, 0.2, 0.0]  # on bin edges: the lower bin, as scikit-learn does
    proba[:3, 0] = 1 - proba[:3, 1]
    got = calibration(classes, true, proba, bins=10)

    observed, predicted = calibration_curve(true == "pos", proba[:, 1], n_bins=10)
    assert got["positive"] == "pos"
    assert [b["observed"] for b in got["bins"]] == pytest.approx(observed.tolist())
    assert [b["mean_predicted"] for b in got["bins"]] == pytest.approx(predicted.tolist())
    edges = np.linspace(0, 1, 11)
    written_out = [
        np.sum((proba[:, 1] > low if i else proba[:, 1] >= low) & (proba[:, 1] <= high))
        for i, (low, high) in enumerate(itertools.pairwise(edges))
    ]
    assert [b["n"] for b in got["bins"]] == [count for count in written_out if count]
    assert sum(b["n"] for b in got["bins"]) == 1_000


def test_multiclass_calibration_is_the_top_probability_against_being_right() -> None:
    classes = ["a", "b", "c"]
    true = text("a", "b", "c", "a", "zz")
    proba = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.25, 0.55], [0.5, 0.4, 0.1], [1, 0, 0]]
    )
    got = calibration(classes, true, proba, bins=2)
    # top .9 right, .6 wrong, .55 right, .5 right (on the edge: the lower bin); "zz" left out
    assert got == {
        "positive": "top",
        "bins": [
            {"mean_predicted": 0.5, "observed": 1.0, "n": 1},
            {"mean_predicted": pytest.approx((0.9 + 0.6 + 0.55) / 3), "observed": 2 / 3, "n": 3},
        ],
    }


def test_residuals_are_a_histogram_of_prediction_minus_label() -> None:
    true, pred = regressed(300)
    got = residuals(true, pred, bins=7)
    counts, edges = np.histogram(pred - true, bins=7)
    assert got == {"edges": pytest.approx(edges.tolist()), "counts": counts.tolist()}
    assert sum(got["counts"]) == 300


def test_histogram_takes_a_number_of_bins_or_edges_and_skips_what_is_not_finite() -> None:
    values = np.array([0.0, 1.0, 1.0, 2.5, 10.0, np.nan, np.inf])
    assert histogram(values, 2) == {"edges": [0.0, 5.0, 10.0], "counts": [4, 1]}
    assert histogram(values, [0, 1, 2, 3]) == {
        "edges": [0.0, 1.0, 2.0, 3.0],
        "counts": [1, 2, 1],  # 10 lies outside the edges
    }
    assert histogram(np.array([]), 4) == {"edges": [], "counts": []}
    assert histogram(np.array([]), [0, 1]) == {"edges": [0.0, 1.0], "counts": [0]}
