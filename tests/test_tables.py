from __future__ import annotations

import decimal
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keyed_serving.tables import (
    InvalidKeys,
    TableWriter,
    check_key_columns,
    check_keys,
    drop_unfinished_line,
    feature_column,
    feature_values,
    iter_batches,
    key_columns,
    read_keys,
    read_table,
    scored_columns,
    scored_table,
    with_row_numbers,
)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_batches_written_then_appended_read_back_whole(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    first = pd.DataFrame({"id": ["007", "008"], "x": [1.0, 2.0]})
    second = pd.DataFrame({"id": ["009"], "x": [3.0]})
    writer = TableWriter(path)
    writer.write(first)
    writer.close()
    writer = TableWriter(path, append=True)  # a resumed run
    writer.write(second)
    writer.close()
    assert read_keys(path, "id") == ["007", "008", "009"]
    assert sum(len(b) for b in iter_batches(path, 2, "id")) == 3
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_writer_that_wrote_nothing_leaves_an_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    TableWriter(path).close()
    assert path.exists() and not list(tmp_path.glob("*.partial"))


TEXT_THAT_IS_NOT_MISSING = ["NA", "None", "null", "nan", "N/A", "#N/A"]


def test_in_a_csv_only_an_empty_cell_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "id,region,x\n"
        + "".join(f"{key},{key},{i}.5\n" for i, key in enumerate(TEXT_THAT_IS_NOT_MISSING))
        + "k7,,\n"
    )
    frame = read_table(path, "id")
    assert frame["id"].tolist() == [*TEXT_THAT_IS_NOT_MISSING, "k7"]
    assert check_keys(frame["id"].tolist()) == [*TEXT_THAT_IS_NOT_MISSING, "k7"]
    assert frame["region"].tolist()[:-1] == TEXT_THAT_IS_NOT_MISSING
    assert pd.isna(frame["region"].iloc[-1])
    assert pd.api.types.is_float_dtype(frame["x"])  # numbers are still numbers
    assert frame["x"].tolist()[:2] == [0.5, 1.5] and pd.isna(frame["x"].iloc[-1])


def test_text_in_a_number_column_is_not_taken_for_a_missing_value() -> None:
    assert feature_values(["nan", "NA", "", "2.5", None], "number") == ["nan", "NA", "", 2.5, None]


def test_an_empty_csv_key_is_refused_by_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,x\na,1\n,2\n")
    with pytest.raises(InvalidKeys, match=r"rows \[1\]"):
        check_keys(read_keys(path, "id"))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_integer_keys_with_a_gap_are_read_exactly(tmp_path: Path, suffix: str) -> None:
    big = [2**53 + i for i in range(1, 9)]
    path = tmp_path / f"t{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"id": pa.array([*big, None], pa.int64())}), path)
    else:
        path.write_text("".join(json.dumps({"id": k}) + "\n" for k in [*big, None]))
    assert read_keys(path, "id") == [*big, None]
    with pytest.raises(InvalidKeys, match=r"rows \[8\]: missing"):
        check_keys(read_keys(path, "id"))
    assert check_keys(read_keys(path, "id")[:-1]) == big


def test_a_json_lines_integer_beyond_64_bits_is_refused_as_a_key_not_a_crash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1}\n{"id": 99999999999999999999}\n')
    with pytest.raises(InvalidKeys, match=r"rows \[1\]: integer outside"):
        check_keys(read_keys(path, "id"))


def test_parquet_decimals_are_numbers_and_whole_decimal_keys_integers(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array(
                    [decimal.Decimal(2**60 + 1), decimal.Decimal(7)], pa.decimal128(20, 0)
                ),
                "amount": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(10, 2)),
            }
        ),
        path,
    )
    frame = read_table(path, "id")
    assert check_keys(frame["id"].tolist()) == [2**60 + 1, 7]
    assert frame["amount"].dtype == "float64"
    assert feature_values(frame["amount"].tolist(), "number") == [1.25, None]


def test_cells_are_sent_as_the_model_was_trained_on_them() -> None:
    assert feature_values([True, np.bool_(False), None, "NA", 7], "category") == [
        "True",
        "False",
        None,
        "NA",
        "7",
    ]
    assert feature_values([decimal.Decimal("2.50"), np.float64(1.0)], "number") == [2.5, 1.0]


@pytest.mark.parametrize(
    "cells",
    [
        pd.Series([1.5, np.nan, np.inf, -np.inf, 0.0]),
        pd.Series([1.5, 2.5], dtype="float32"),
        pd.Series([3, -4], dtype="int64"),
        pd.Series([1, None], dtype="Int64"),
        pd.Series([1.5, None], dtype="Float64"),
        pd.Series([True, False]),
        pd.Series(["1.5", "x", None, decimal.Decimal("2")], dtype=object),
    ],
    ids=["float64", "float32", "int64", "Int64", "Float64", "bool", "object"],
)
def test_a_column_is_sent_cell_for_cell_as_its_cells_are(cells: pd.Series) -> None:
    for feature_type in ("number", "category"):
        column = feature_column(cells, feature_type)
        expected = feature_values(cells.tolist(), feature_type)
        assert column == expected
        assert [type(v) for v in column] == [type(v) for v in expected]


def test_scored_rows_are_written_the_same_from_entries_and_from_columns() -> None:
    entries = [
        {"key": "a", "prediction": "yes", "probabilities": {"no": 0.25, "yes": 0.75}},
        {"key": "b", "error": {"code": "out_of_range", "message": "x is infinite"}},
    ]
    kept = pd.DataFrame({"region": ["n", "s"]})
    from_entries = scored_table({"id": ["a", "b"]}, entries, ["no", "yes"], kept)
    from_columns = scored_columns(
        {"id": ["a", "b"]},
        ["yes", None],
        {"no": [0.25, None], "yes": [0.75, None]},
        ["no", "yes"],
        kept,
        [None, "out_of_range: x is infinite"],
    )
    pd.testing.assert_frame_equal(from_entries, from_columns)
    assert from_columns.columns.tolist() == [
        "id",
        "prediction",
        "probability_no",
        "probability_yes",
        "error",
        "region",
    ]


def test_a_key_of_several_columns_is_judged_whole_and_each_part_by_the_key_rules() -> None:
    keys = check_key_columns({"region": ["n", "n", "s"], "id": [1, 2, 1]})
    assert keys == [("n", 1), ("n", 2), ("s", 1)]
    with pytest.raises(InvalidKeys, match=r"duplicated key\(s\) \(region, id\): \[\('n', 1\)\]"):
        check_key_columns({"region": ["n", "n"], "id": [1, 1]})
    with pytest.raises(
        InvalidKeys, match=r"in key column 'id', first at rows \[1\]: string of 257"
    ):
        check_key_columns({"region": ["n", "n"], "id": ["a", "x" * 257]})


def test_row_keys_are_positions_in_a_column_named_row() -> None:
    numbered = with_row_numbers(pd.DataFrame({"x": [5, 6]}, index=[10, 11]), start=3)
    assert numbered.columns.tolist() == ["row", "x"] and numbered["row"].tolist() == [3, 4]
    assert key_columns("@row") == ["row"] and key_columns(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="column 'row' already"):
        with_row_numbers(numbered)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_half_written_last_line_is_removed(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    whole = "id,x\na,1\nb,2\n" if suffix == ".csv" else '{"id": "a"}\n{"id": "b"}\n'
    path.write_text(whole + whole.splitlines()[-1][:3])
    assert drop_unfinished_line(path) and path.read_text() == whole
    assert not drop_unfinished_line(path) and path.read_text() == whole


def test_date_times_are_sent_as_text_a_category_as_its_str_a_datetime_as_iso() -> None:
    when = pd.Series(pd.to_datetime(["2024-01-05 10:30", None]))
    # A model that took a date-time column for a category has str() of each as categories.
    assert feature_column(when, "category") == ["2024-01-05 10:30:00", None]
    assert feature_column(when, "datetime") == ["2024-01-05T10:30:00", None]
    assert feature_values(["2024-01-05"], "datetime") == ["2024-01-05"]


def test_exact_columns_of_a_parquet_file_keep_their_arrow_type(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    account = pa.array([2**53 + 1, None], pa.int64())
    pq.write_table(pa.table({"id": ["a", "b"], "account": account}), path)
    (batch,) = iter_batches(path, 10, "id", exact=["account"])
    assert batch["account"].tolist()[0] == 2**53 + 1
    assert feature_column(batch["account"], "category") == [str(2**53 + 1), None]
