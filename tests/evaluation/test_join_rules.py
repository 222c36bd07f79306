"""The join rules of keyed-evaluate (keyed_serving.evaluation.join), one by one, each on a
small capture directory written by hand in the capture layout, on DuckDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from captures import (
    at,
    ensure_metrics,
    label,
    prediction,
    write_drops,
    write_labels,
    write_predictions,
)

from keyed_serving.evaluation import report
from keyed_serving.evaluation.engines import DuckDBEngine
from keyed_serving.evaluation.join import HOUR, Joined, Rules, evaluate
from keyed_serving.evaluation.read import (
    LabelFile,
    empty_labels,
    open_capture,
    read_label_file,
    to_microseconds,
)

ensure_metrics()


def join(
    root: Path, file_labels: pd.DataFrame | None = None, until: float = 100, **rules: Any
) -> Joined:
    capture = open_capture(root)
    engine = DuckDBEngine()
    try:
        return evaluate(
            engine,
            capture,
            empty_labels(capture.task) if file_labels is None else file_labels,
            Rules(until_us=to_microseconds(at(until)), **rules),
        )
    finally:
        engine.close()


def joined_hours(joined: Joined) -> list[tuple[str, float, str]]:
    """(key, hour of the prediction, label) of each pair."""
    start = to_microseconds(at(0))
    return [
        (row.key, (row.ts_us - start) / HOUR, row.label)
        for row in joined.pairs.itertuples(index=False)
    ]


def test_a_label_with_a_request_id_joins_exactly_that_prediction(tmp_path: Path) -> None:
    write_predictions(
        tmp_path,
        [
            prediction(1, 0, "no", request_id="first"),
            prediction(1, 5, "yes", request_id="second"),
            prediction(2, 5, "yes", request_id="first"),
        ],
    )
    write_labels(
        tmp_path,
        [
            label(1, "no", 9, request_id="first"),
            label(1, "no", request_id="elsewhere"),  # no such request: an orphan
        ],
    )

    joined = join(tmp_path)

    assert joined_hours(joined) == [("1", 0.0, "no")]
    assert joined.pairs["request_id"].tolist() == ["first"]
    assert joined.diagnostics["matched"] == 1
    assert joined.diagnostics["orphan_labels"] == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("last", [2.0]), ("first", [0.0]), ("all", [0.0, 2.0])],
)
def test_a_label_joins_as_of_its_time_by_the_policy(
    tmp_path: Path, policy: str, expected: list[float]
) -> None:
    # predictions at 0, 2 and 4 hours; the label's time is 3: the one at 4 came after it
    write_predictions(tmp_path, [prediction("k", h, "yes") for h in (0, 2, 4)])
    write_labels(tmp_path, [label("k", "yes", 3)])

    joined = join(tmp_path, policy=policy)

    assert [hours for _, hours, _ in joined_hours(joined)] == expected
    assert joined.diagnostics["matched"] == 1


def test_a_prediction_older_than_max_delay_before_the_label_is_not_joined(tmp_path: Path) -> None:
    write_predictions(
        tmp_path,
        [prediction("a", 2, "no"), prediction("a", 6, "yes"), prediction("b", 2, "no")],
    )
    write_labels(tmp_path, [label("a", "yes", 10), label("b", "no", 10)])

    first = join(tmp_path, policy="first", max_delay_us=5 * HOUR)

    # a: the one at 2 is 8 hours before its label, past the 5 allowed; b has none left
    assert joined_hours(first) == [("a", 6.0, "yes")]
    assert first.diagnostics["orphan_labels"] == 1
    assert joined_hours(join(tmp_path, policy="first")) == [("a", 2.0, "yes"), ("b", 2.0, "no")]


def test_a_label_without_time_joins_the_latest_prediction_within_max_delay_of_until(
    tmp_path: Path,
) -> None:
    write_predictions(
        tmp_path,
        [prediction("a", 0, "no"), prediction("a", 40, "yes"), prediction("b", 10, "no")],
    )
    write_labels(tmp_path, [label("a", "yes"), label("b", "no")])

    joined = join(tmp_path, until=60, max_delay_us=30 * HOUR)

    # a: the latest (40); b: its only prediction is 50 hours before until, past 30
    assert joined_hours(joined) == [("a", 40.0, "yes")]
    assert joined.diagnostics["orphan_labels"] == 1


def test_keys_compare_with_their_type(tmp_path: Path) -> None:
    write_predictions(tmp_path, [prediction(1, 0, "no"), prediction("1", 1, "yes")])
    write_labels(tmp_path, [label("1", "yes", 5)])

    joined = join(tmp_path)

    assert joined.pairs[["key", "key_type", "prediction"]].values.tolist() == [["1", "str", "yes"]]
    # and the other way round: an integer label only meets the integer prediction
    write_labels(tmp_path, [label(1, "no", 5)])
    assert join(tmp_path).pairs[["key_type", "prediction"]].values.tolist() == [["int", "no"]]


def test_duplicate_and_conflicting_labels_are_counted_and_the_latest_wins(
    tmp_path: Path,
) -> None:
    write_predictions(
        tmp_path, [prediction("a", 0, "no"), prediction("b", 0, "no"), prediction("c", 0, "no")]
    )
    write_labels(
        tmp_path,
        [
            # a: two labels "yes" (one a duplicate) and an older "no": a conflict, yes wins
            label("a", "yes", 5),
            label("a", "no", 3),
            label("a", "yes", 5),
            # b: the same time, received later wins
            label("b", "yes", 5, received=200),
            label("b", "no", 5, received=300),
            # c: a duplicate only
            label("c", "no", 4),
            label("c", "no", 4),
        ],
    )

    joined = join(tmp_path)

    assert joined.pairs[["key", "label"]].values.tolist() == [
        ["a", "yes"],
        ["b", "no"],
        ["c", "no"],
    ]
    assert joined.diagnostics["labels"] == 7
    assert joined.diagnostics["duplicate_labels"] == 2
    assert joined.diagnostics["conflicting_labels"] == 2
    assert joined.diagnostics["matched"] == 3


def test_a_label_file_comes_after_the_captured_labels_and_a_later_row_after_an_earlier(
    tmp_path: Path,
) -> None:
    write_predictions(tmp_path, [prediction("a", 0, "no"), prediction("b", 0, "no")])
    write_labels(tmp_path, [label("a", "yes", 5)])
    file = tmp_path / "labels.csv"
    # same times: a's row is later in order than its captured label; b's second row wins
    file.write_text(
        "id,truth,when\n"
        "a,no,2026-03-02T17:00:00Z\n"
        "b,yes,2026-03-02T17:00:00Z\n"
        "b,no,2026-03-02T17:00:00Z\n"
    )
    labels = read_label_file(LabelFile(file, "id", "truth", "when"), "classification")
    # a label time sets no received: with the captured one's time equal, the captured one
    # (received) wins over the file's (none)
    joined = join(tmp_path, labels)

    assert joined.pairs[["key", "label"]].values.tolist() == [["a", "yes"], ["b", "no"]]
    assert joined.diagnostics["labels"] == 4
    assert joined.diagnostics["conflicting_labels"] == 2


def test_labels_posted_to_another_model_are_left_out(tmp_path: Path) -> None:
    write_predictions(tmp_path, [prediction("a", 0, "no")])
    write_labels(
        tmp_path,
        [
            label("a", "yes", 5, model="other"),
            label("a", "yes", 5, model="churner:v1"),
            label("a", "no", 4, model=None),  # a label file's
            label("a", "no", 3, model="churn:v1"),  # posted to a server of the model
        ],
    )

    joined = join(tmp_path)

    assert joined.pairs["label"].tolist() == ["no"]
    assert joined.diagnostics["labels"] == 2


def test_orphan_labels_and_unlabelled_predictions_are_counted(tmp_path: Path) -> None:
    write_predictions(
        tmp_path,
        [
            prediction("a", 0, "no"),
            prediction("b", 0, "no"),
            prediction("c", 90, "no"),
            prediction("d", 0, error="model_error"),  # failed: never to be labelled
        ],
    )
    write_labels(tmp_path, [label("a", "no", 1), label("x", "no", 1), label("y", "maybe", 1)])

    joined = join(tmp_path, until=100, max_delay_us=50 * HOUR)

    assert joined.diagnostics["orphan_labels"] == 2
    assert joined.diagnostics["matched"] == 1
    # b was predicted 100 hours before until and is still unlabelled; c only 10 hours
    assert joined.diagnostics["unlabelled_past_max_delay"] == 1
    assert joined.diagnostics["unknown_class_labels"] == 1


def test_a_failed_prediction_is_joined_and_counted_but_not_scored(tmp_path: Path) -> None:
    write_predictions(
        tmp_path,
        [prediction("a", 0, error="model_error"), prediction("b", 0, "yes")],
    )
    write_labels(tmp_path, [label("a", "yes", 1), label("b", "yes", 1)])
    capture = open_capture(tmp_path)
    rules = Rules(until_us=to_microseconds(at(100)))

    joined = join(tmp_path)
    built = report.build(capture, rules, joined, engine="duckdb")

    assert joined.diagnostics["labelled_failed"] == 1
    assert joined.diagnostics["failed_predictions"] == 1
    version = built["versions"]["v1"]
    assert (version["predictions"], version["failed"], version["labelled"]) == (2, 1, 1)
    assert version["coverage"] == 1.0
    assert version["metrics"]["accuracy"]["n"] == 1


def test_a_retried_request_counts_once_with_its_latest_answer(tmp_path: Path) -> None:
    write_predictions(
        tmp_path,
        [
            prediction("a", 0, "no", request_id="r1"),
            prediction("a", 0.01, "yes", request_id="r1"),  # the retry
            prediction("b", 0, "no", request_id="r1"),
        ],
    )
    write_labels(tmp_path, [label("a", "yes", request_id="r1")])

    joined = join(tmp_path)

    assert int(joined.windows["predictions"].sum()) == 2
    assert joined.pairs["prediction"].tolist() == ["yes"]
    assert joined.diagnostics["keys_predicted_more_than_once"] == 0


def test_two_versions_are_scored_apart(tmp_path: Path) -> None:
    write_predictions(
        tmp_path, [prediction("a", 0, "yes"), prediction("b", 1, "yes")], version="v1"
    )
    write_predictions(
        tmp_path, [prediction("a", 10, "no"), prediction("c", 11, "no")], version="v0"
    )
    write_labels(
        tmp_path,
        [label("a", "yes", 5), label("b", "no", 5), label("c", "no", 12)],
    )
    capture = open_capture(tmp_path)

    joined = join(tmp_path)
    built = report.build(capture, Rules(until_us=to_microseconds(at(100))), joined, engine="duckdb")

    # a's label (5 h) came between its two predictions: it joins v1's, made before it
    assert list(built["versions"]) == ["v1", "v0"]  # by first prediction, not by name
    v1, v0 = built["versions"]["v1"], built["versions"]["v0"]
    assert (v1["labelled"], v1["metrics"]["accuracy"]["value"]) == (2, 0.5)
    assert (v0["labelled"], v0["metrics"]["accuracy"]["value"]) == (1, 1.0)
    assert joined.diagnostics["keys_predicted_more_than_once"] == 1


def test_since_and_until_bound_prediction_time_and_windows_say_when_they_are_complete(
    tmp_path: Path,
) -> None:
    write_predictions(tmp_path, [prediction("a", h, "yes") for h in (-30, 1, 30, 60)])
    write_drops(tmp_path, [(1, 3), (2, 4)])
    capture = open_capture(tmp_path)
    rules = Rules(
        since_us=to_microseconds(at(0)), until_us=to_microseconds(at(50)), max_delay_us=20 * HOUR
    )

    engine = DuckDBEngine()
    try:
        joined = evaluate(engine, capture, empty_labels(capture.task), rules)
    finally:
        engine.close()
    built = report.build(capture, rules, joined, engine="duckdb")

    windows = built["versions"]["v1"]["windows"]
    assert [(w["start"], w["predictions"]) for w in windows] == [
        ("2026-03-02T00:00:00Z", 1),
        ("2026-03-03T00:00:00Z", 1),
    ]
    # until is 2026-03-04 14:00: the first day's end + 20 hours is before it, the second's after
    assert [w["complete"] for w in windows] == [True, False]
    assert built["diagnostics"]["capture_drops"] == 7
    assert built["rules"]["since"] == "2026-03-02T12:00:00Z"


@pytest.mark.parametrize(
    ("window", "starts"),
    [
        ("hour", ["2026-03-02T12:00:00Z", "2026-03-05T13:00:00Z"]),
        ("day", ["2026-03-02T00:00:00Z", "2026-03-05T00:00:00Z"]),
        ("week", ["2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"]),
    ],
)
def test_windows_are_utc_hours_days_and_weeks_from_monday(
    tmp_path: Path, window: str, starts: list[str]
) -> None:
    write_predictions(tmp_path, [prediction("a", 0.5, "yes"), prediction("b", 73.5, "no")])
    write_predictions(tmp_path, [prediction("c", 24 * 7 - 11.5, "no")], name="part-1")
    capture = open_capture(tmp_path)
    rules = Rules(until_us=to_microseconds(at(500)), window=window)

    joined = join(tmp_path, until=500, window=window)
    built = report.build(capture, rules, joined, engine="duckdb")

    got = [w["start"] for w in built["versions"]["v1"]["windows"]]
    assert got[0] == starts[0]
    assert starts[1] in got


def test_a_version_without_labels_yet_is_reported_as_too_few(tmp_path: Path) -> None:
    write_predictions(tmp_path, [prediction("a", 0, "yes"), prediction("b", 1, "no")])
    capture = open_capture(tmp_path)

    built = report.build(
        capture, Rules(until_us=to_microseconds(at(100))), join(tmp_path), engine="duckdb"
    )

    version = built["versions"]["v1"]
    assert (version["labelled"], version["coverage"]) == (0, 0.0)
    assert version["metrics"]["accuracy"] == {
        "value": None,
        "low": None,
        "high": None,
        "n": 0,
        "too_few": True,
    }
    assert version["metrics"]["confusion_matrix"]["counts"] == [[0, 0], [0, 0]]
    assert "calibration" not in version
    assert version["label_delay_s"] == {"edges": [], "counts": [], "median": None}
    assert version["windows"][0]["distribution"]["share"] == {"no": 0.5, "yes": 0.5}


def test_label_delay_is_the_label_time_or_else_its_arrival_after_the_prediction(
    tmp_path: Path,
) -> None:
    write_predictions(tmp_path, [prediction("a", 0, "yes"), prediction("b", 0, "no")])
    # a: labelled for 3 hours after; b: no time, received 10 hours after
    write_labels(tmp_path, [label("a", "yes", 3), label("b", "no", received=10)])
    capture = open_capture(tmp_path)

    built = report.build(
        capture, Rules(until_us=to_microseconds(at(100))), join(tmp_path), engine="duckdb"
    )

    delays = built["versions"]["v1"]["label_delay_s"]
    assert delays["median"] == (3 + 10) / 2 * 3600
    assert sum(delays["counts"]) == 2
