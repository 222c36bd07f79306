"""TableWriter when a run never reaches close() (killed): what it wrote is still there, and
the next run either carries it on (append) or starts afresh."""

from __future__ import annotations

import datetime
import decimal
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from keyed_serving.tables import TableWriter, read_keys, read_table, recover_interrupted


def batch(*ids: str) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "prediction": [f"p-{i}" for i in ids]})


def killed_run(path: Path, *batches: pd.DataFrame, append: bool = False) -> None:
    """A run that wrote these batches and died before close(), mid-way through the next."""
    writer = TableWriter(path, append=append)
    for frame in batches:
        writer.write(frame)
    parts = path.with_name(path.name + ".parts")
    (parts / ".part-999999.parquet.tmp").write_bytes(b"PAR1 half a file")


def test_a_killed_parquet_run_leaves_every_batch_it_wrote_readable(tmp_path: Path) -> None:
    path = tmp_path / "scored.parquet"
    killed_run(path, batch("a", "b"), batch("c"))
    # Whole Parquet files as they are, for any reader (the half-written one is hidden).
    assert pq.read_table(path.with_name("scored.parquet.parts")).column("id").to_pylist() == [
        "a",
        "b",
        "c",
    ]
    assert recover_interrupted(path)
    assert read_keys(path, "id") == ["a", "b", "c"]
    assert not list(tmp_path.glob("scored.parquet.*"))  # no parts, no staging file left
    assert not recover_interrupted(path)


def test_an_appending_run_carries_on_from_a_killed_one(tmp_path: Path) -> None:
    path = tmp_path / "scored.parquet"
    writer = TableWriter(path)
    writer.write(batch("a"))
    writer.close()
    killed_run(path, batch("b"), append=True)  # a resumed run, killed in turn
    writer = TableWriter(path, append=True)
    writer.write(batch("c"))
    writer.close()
    assert read_table(path)[["id", "prediction"]].values.tolist() == [
        ["a", "p-a"],
        ["b", "p-b"],
        ["c", "p-c"],
    ]
    assert not list(tmp_path.glob("scored.parquet.*"))


def test_a_new_run_forgets_what_an_earlier_one_left(tmp_path: Path) -> None:
    path = tmp_path / "scored.parquet"
    writer = TableWriter(path)
    writer.write(batch("old"))
    writer.close()
    killed_run(path, batch("killed"), append=True)
    writer = TableWriter(path)
    writer.write(batch("new"))
    writer.close()
    assert read_keys(path, "id") == ["new"]


def test_an_empty_first_batch_does_not_fix_the_columns_types(tmp_path: Path) -> None:
    path = tmp_path / "scored.parquet"
    writer = TableWriter(path)
    writer.write(pd.DataFrame({"id": [], "prediction": []}))  # a run stopped at once
    writer.write(batch("a"))
    writer.close()
    assert read_keys(path, "id") == ["a"]


def test_a_text_output_cut_mid_line_loses_only_that_line(tmp_path: Path) -> None:
    path = tmp_path / "scored.csv"
    path.write_text("id,prediction\na,p-a\nb,p-")
    assert recover_interrupted(path)
    assert path.read_text() == "id,prediction\na,p-a\n"


def test_json_lines_output_holds_every_value_exactly(tmp_path: Path) -> None:
    """Probabilities to the last bit (pandas' to_json writes 10 significant digits), a
    decimal as its exact text, a date-time as ISO 8601 (not epoch milliseconds), a gap as
    null, integers beyond 2^53 as they are."""
    probabilities = [0.12043136405682997, 1 / 3, None]
    frame = pd.DataFrame(
        {
            "id": [9007199254740993, 2, 3],
            "prediction": ["east", "west", None],
            "probability_east": pd.array(probabilities, dtype="Float64"),
            "amount": pd.Series(
                [decimal.Decimal("1.50"), None, decimal.Decimal("12345678901234567.25")],
                dtype=object,
            ),
            "seen": pd.to_datetime(["2024-01-05T10:30:00", None, "1999-12-31T00:00:00"]),
        }
    )
    path = tmp_path / "out.jsonl"
    writer = TableWriter(path)
    writer.write(frame)
    writer.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [9007199254740993, 2, 3]
    assert [r["probability_east"] for r in rows] == probabilities
    assert [r["prediction"] for r in rows] == ["east", "west", None]
    assert [r["amount"] for r in rows] == ["1.50", None, "12345678901234567.25"]
    assert [r["seen"] for r in rows] == ["2024-01-05T10:30:00", None, "1999-12-31T00:00:00"]
    assert rows[0]["seen"] == datetime.datetime(2024, 1, 5, 10, 30).isoformat()
