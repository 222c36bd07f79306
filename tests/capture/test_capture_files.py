"""Captured rows as an Arrow table (every key kind, both tasks, error rows, features kept
or left out) and the Parquet writer that renames a whole file in."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keyed_serving.capture import layout
from keyed_serving.capture.files import (
    Captured,
    CapturedModel,
    captured_table,
    write_atomic,
    write_predictions,
)
from keyed_serving.schemas import FeatureInfo

FEATURES = (
    FeatureInfo(name="size", type="number"),
    FeatureInfo(name="colour", type="category"),
    FeatureInfo(name="seen", type="datetime", dtype="datetime64[ns, UTC]"),
)
CLASSIFIER = CapturedModel("shapes", "v1", "classification", (0, 1, 2), FEATURES)
REGRESSOR = CapturedModel("prices", "v2", "regression", None, FEATURES[:2])
WHEN = datetime.datetime(2026, 12, 6, 23, 59, 59, 500000, tzinfo=datetime.UTC)


def batch(keys: list, **given) -> Captured:
    n = len(keys)
    fields = {
        "request_id": "r-1",
        "source": "predict",
        "ts": WHEN,
        "keys": keys,
        "columns": [
            np.arange(n, dtype=np.float64),
            np.array(["red"] * n, dtype=object),
            np.array(["2026-01-02T03:04:05+01:00"] * n, dtype=object),
        ],
        "predictions": [i % 3 for i in range(n)],
        "probabilities": np.tile([0.2, 0.3, 0.5], (n, 1)),
    }
    return Captured(**{**fields, **given})


@pytest.mark.parametrize(
    ("keys", "texts", "types"),
    [
        ([7, -(2**63), 2**63 - 1], ["7", str(-(2**63)), str(2**63 - 1)], ["int"] * 3),
        (["a", "1", "é"], ["a", "1", "é"], ["str"] * 3),
        ([1, "1", ("x", 2)], ["1", "1", '["x",2]'], ["int", "str", "composite"]),
    ],
)
def test_keys_are_kept_as_text_with_their_type(keys: list, texts: list, types: list) -> None:
    table = captured_table(CLASSIFIER, [batch(keys)])
    assert table[layout.KEY].to_pylist() == texts
    assert table[layout.KEY_TYPE].to_pylist() == types


def test_a_classifier_row_holds_class_text_probabilities_and_features() -> None:
    table = captured_table(CLASSIFIER, [batch([10, 11])])
    assert table.schema.names[: len(layout.PREDICTION_COLUMNS)] == list(layout.PREDICTION_COLUMNS)
    row = table.to_pylist()[1]
    assert row["prediction"] == "1" and row["error"] is None
    assert (row["probability_0"], row["probability_1"], row["probability_2"]) == (0.2, 0.3, 0.5)
    assert row["feature_size"] == 1.0 and row["feature_colour"] == "red"
    assert row["feature_seen"] == datetime.datetime(2026, 1, 2, 2, 4, 5, tzinfo=datetime.UTC)
    assert row["ts"] == WHEN and row["request_id"] == "r-1" and row["source"] == "predict"
    metadata = table.schema.metadata
    assert metadata[layout.META_TASK] == b"classification"
    assert orjson.loads(metadata[layout.META_CLASSES]) == ["0", "1", "2"]
    assert orjson.loads(metadata[layout.META_FEATURES]) == ["size", "colour", "seen"]


def test_a_regressor_row_holds_a_number_and_no_probabilities() -> None:
    captured = batch(["a", "b"], predictions=[1.5, -2.0], probabilities=None)
    captured = dataclasses.replace(captured, columns=captured.columns[:2])
    table = captured_table(REGRESSOR, [captured])
    assert table.schema.field(layout.PREDICTION).type == pa.float64()
    assert table[layout.PREDICTION].to_pylist() == [1.5, -2.0]
    assert not [name for name in table.schema.names if name.startswith("probability_")]


def test_model_errors_and_refused_keys_are_rows_with_their_error() -> None:
    captured = batch(
        [1, 2],
        predictions=[2, None],
        probabilities=np.array([[0.1, 0.1, 0.8], [np.nan] * 3]),
        errors={1: ("model_error", "the model raised")},
        refused=[(3, "missing_feature", "instances[2].features.size: missing")],
    )
    rows = {row["key"]: row for row in captured_table(CLASSIFIER, [captured]).to_pylist()}
    assert rows["1"]["prediction"] == "2" and rows["1"]["error"] is None
    assert rows["2"]["prediction"] is None and rows["2"]["error"] == "model_error"
    assert rows["2"]["probability_2"] is None
    assert rows["2"]["feature_size"] == 1.0  # what the model got, though it raised
    assert rows["3"]["error"] == "missing_feature" and rows["3"]["prediction"] is None
    assert rows["3"]["feature_size"] is None and rows["3"]["error_message"].endswith("missing")
    assert rows["3"]["request_id"] == "r-1" and rows["3"]["ts"] == WHEN


def test_features_can_be_left_out() -> None:
    table = captured_table(CLASSIFIER, [batch([1])], features=False)
    assert not [name for name in table.schema.names if name.startswith("feature_")]
    assert orjson.loads(table.schema.metadata[layout.META_FEATURES]) == ["size", "colour", "seen"]


def test_a_missing_number_is_null_and_batches_keep_their_own_ids() -> None:
    first = batch([1], columns=[np.array([np.nan]), np.array([None], object), np.array([None])])
    second = batch(["x", "y"], request_id="r-2", source="v2_grpc", ts=WHEN.timestamp() + 1)
    table = captured_table(CLASSIFIER, [first, second])
    assert table["feature_size"].to_pylist() == [None, 0.0, 1.0]
    assert table["feature_colour"].to_pylist() == [None, "red", "red"]
    assert table[layout.REQUEST_ID].to_pylist() == ["r-1", "r-2", "r-2"]
    assert table[layout.SOURCE].to_pylist() == ["predict", "v2_grpc", "v2_grpc"]


def test_string_classes_and_boolean_classes_are_their_text() -> None:
    words = CapturedModel("m", "v", "classification", ("no", "yes"), ())
    flags = CapturedModel("m", "v", "classification", (False, True), ())
    assert captured_table(
        words, [Captured("r", "predict", WHEN, ["a", "b"], [], ["yes", None], None, {1: ("e", "")})]
    )[layout.PREDICTION].to_pylist() == ["yes", None]
    assert captured_table(flags, [Captured("r", "predict", WHEN, ["a"], [], [True])])[
        layout.PREDICTION
    ].to_pylist() == ["true"]


def test_rows_are_written_one_file_per_date_and_read_back(tmp_path: Path) -> None:
    late = batch([1])
    early_next_day = batch([2], ts=WHEN + datetime.timedelta(seconds=1))
    table = captured_table(CLASSIFIER, [late, early_next_day])
    written = write_predictions(tmp_path, CLASSIFIER, table, stem="w-1")
    assert [path.relative_to(tmp_path).as_posix() for path in written] == [
        "predictions/model=shapes/version=v1/date=2026-12-06/w-1.parquet",
        "predictions/model=shapes/version=v1/date=2026-12-07/w-1.parquet",
    ]
    assert [pq.read_table(path)[layout.KEY].to_pylist() for path in written] == [["1"], ["2"]]


def test_a_file_is_renamed_in_whole_and_never_seen_half_written(tmp_path: Path) -> None:
    table = captured_table(CLASSIFIER, [batch([1, 2])])
    seen: list[list[str]] = []

    def admit(size: int) -> bool:
        # The moment before the rename: only the hidden temporary name exists.
        seen.append(sorted(path.name for path in tmp_path.iterdir()))
        return size > 0

    path = write_atomic(table, tmp_path, "w-1", admit=admit)
    assert seen == [[".w-1.parquet.tmp"]]
    assert path is not None and sorted(p.name for p in tmp_path.iterdir()) == ["w-1.parquet"]
    assert write_atomic(table, tmp_path, "w-2", admit=lambda size: False) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-1.parquet"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    table = captured_table(CLASSIFIER, [batch([1])])

    def broken(size: int) -> bool:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(table, tmp_path, "w-1", admit=broken)
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError):
        write_atomic(table, blocker / "below", "w-1")


def test_datetime_features_of_every_kind_become_timestamps() -> None:
    import pandas as pd

    cells = np.array(
        [
            "2026-01-02T03:04:05+01:00",
            "2026-01-02T03:04:05",
            pd.Timestamp("2026-01-02T03:04:05", tz="UTC"),
            datetime.datetime(2026, 1, 2, 3, 4, 5),
            None,
            float("nan"),
            pd.NaT,
            "not a date",
        ],
        dtype=object,
    )
    n = len(cells)
    captured = batch(list(range(n)), columns=[np.zeros(n), np.array(["red"] * n, object), cells])
    seen = captured_table(CLASSIFIER, [captured])["feature_seen"].to_pylist()
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert seen == [at - datetime.timedelta(hours=1), at, at, at, None, None, None, None]
