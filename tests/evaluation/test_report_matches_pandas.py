"""report.json on a random capture equals the rules computed plainly in pandas
(random_capture.reference), for each policy, classifier and regressor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from captures import ensure_metrics
from random_capture import MAX_DELAY, UNTIL, random_capture, reference
from sklearn.metrics import accuracy_score, mean_absolute_error

from keyed_serving.evaluation import report
from keyed_serving.evaluation.engines import DuckDBEngine, Engine
from keyed_serving.evaluation.join import Rules, evaluate
from keyed_serving.evaluation.read import empty_labels, open_capture, to_microseconds

ensure_metrics()
RULES = {
    "until_us": to_microseconds(UNTIL),
    "max_delay_us": int(MAX_DELAY.total_seconds()) * 1_000_000,
}


def evaluated(
    root: Path,
    engine: Engine,
    policy: str,
    window: str = "day",
    labels: pd.DataFrame | None = None,
) -> dict[str, Any]:
    capture = open_capture(root)
    rules = Rules(policy=policy, window=window, **RULES)
    try:
        file_labels = empty_labels(capture.task) if labels is None else labels
        joined = evaluate(engine, capture, file_labels, rules)
    finally:
        engine.close()
    return report.build(capture, rules, joined, engine=engine.name, min_count=5)


def score(task: str, pairs: Any) -> float:
    if task == "classification":
        return float(accuracy_score(pairs["label"].astype(str), pairs["prediction"].astype(str)))
    return float(
        mean_absolute_error(pairs["label"].astype(float), pairs["prediction"].astype(float))
    )


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize(("policy", "seed"), [("last", 1), ("first", 2), ("all", 3)])
def test_the_report_equals_the_rules_computed_in_pandas(
    tmp_path: Path, task: str, policy: str, seed: int
) -> None:
    written = random_capture(tmp_path, seed, task)
    expected = reference(written, task, policy)

    built = evaluated(tmp_path, DuckDBEngine(), policy)

    assert built["diagnostics"] == expected["diagnostics"]
    assert built["diagnostics"]["duplicate_labels"] > 0  # the capture has all the cases
    assert built["diagnostics"]["conflicting_labels"] > 0
    assert built["diagnostics"]["orphan_labels"] > 0
    assert built["diagnostics"]["labelled_failed"] > 0
    order = sorted(expected["versions"], key=lambda v: expected["versions"][v]["first"])
    assert list(built["versions"]) == order
    name = "accuracy" if task == "classification" else "mae"
    for version, want in expected["versions"].items():
        got = built["versions"][version]
        assert (got["predictions"], got["failed"], got["labelled"]) == (
            want["predictions"],
            want["failed"],
            want["labelled"],
        )
        assert got["coverage"] == pytest.approx(want["coverage"])
        assert got["metrics"][name]["n"] == want["labelled"]
        assert got["metrics"][name]["value"] == pytest.approx(score(task, want["pairs"]))
        assert [w["start"] for w in got["windows"]] == [w["start"] for w in want["windows"]]
        for window, reference_window in zip(got["windows"], want["windows"], strict=True):
            assert (window["predictions"], window["failed"], window["labelled"]) == (
                reference_window["predictions"],
                reference_window["failed"],
                reference_window["labelled"],
            )
            if reference_window["labelled"]:
                assert window["metrics"][name]["value"] == pytest.approx(
                    score(task, reference_window["pairs"])
                )
            if task == "classification":
                assert window["distribution"]["share"] == pytest.approx(reference_window["share"])
                assert window["distribution"]["mean_probability"] == pytest.approx(
                    reference_window["mean_probability"]
                )
            else:
                got_distribution = {
                    k: v for k, v in window["distribution"].items() if v is not None
                }
                want_distribution = {
                    k: float(v)
                    for k, v in reference_window["distribution"].items()
                    if v == v  # NaN: one prediction has no std
                }
                assert got_distribution == pytest.approx(want_distribution)


@pytest.mark.parametrize("window", ["hour", "week"])
def test_windows_of_an_hour_and_a_week_hold_the_predictions_pandas_puts_in_them(
    tmp_path: Path, window: str
) -> None:
    written = random_capture(tmp_path, 7)
    expected = reference(written, "classification", "last", window)

    built = evaluated(tmp_path, DuckDBEngine(), "last", window)

    for version, want in expected["versions"].items():
        got = built["versions"][version]["windows"]
        assert [(w["start"], w["predictions"], w["labelled"]) for w in got] == [
            (w["start"], w["predictions"], w["labelled"]) for w in want["windows"]
        ]
