"""Tables on disk: CSV, Parquet and JSON Lines, chosen by file extension, read in batches
and written incrementally so that a large table is never held whole."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from keyed_serving.keys import Key, find_key_problems, key_from_cell

Format = Literal["csv", "parquet", "jsonl"]
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/jsonl",
}
EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class InvalidKeys(ValueError):
    """The input's keys are unusable as they are (found before anything is sent)."""


def check_keys(keys: Sequence[Any]) -> list[Key]:
    """A table's key cells as keys (``keyed_serving.keys``); raises ``InvalidKeys`` naming
    the unusable and duplicated ones."""
    clean = [key_from_cell(key) for key in keys]
    problems = find_key_problems(clean)
    if problems.unusable:
        positions = [index for index, _ in problems.unusable]
        raise InvalidKeys(
            f"{len(positions)} row(s) without a usable key, first at rows {positions[:10]}: "
            f"{problems.unusable[0][1]}"
        )
    if problems.duplicated:
        shown = [key for _, key, _ in problems.duplicated[:10]]
        raise InvalidKeys(f"{len(problems.duplicated)} duplicated key(s): {shown}")
    return clean


def json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value


def number_or_as_is(value: Any) -> Any:
    """A number feature's cell: text that reads as a number becomes one. A CSV column with
    one bad cell is read as text throughout; this keeps that one cell the only failure."""
    value = json_value(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # judged, and refused for that key alone, by the server
        return None if math.isnan(number) else number
    return value


def scored_table(
    keys: Sequence[Key],
    entries: Sequence[dict[str, Any]],
    key: str,
    classes: Sequence[Any] | None,
    kept: pd.DataFrame,
    error_column: bool = False,
) -> pd.DataFrame:
    """The scored rows: the key column, ``prediction``, one ``probability_<class>`` column per
    class, an ``error`` column (when asked for, or when an entry is an error), then the kept
    columns. Typed columns, so that every batch of a file has the same schema."""
    table: dict[str, Any] = {key: list(keys)}
    table["prediction"] = [e.get("prediction") for e in entries]
    for label in classes or []:
        table[f"probability_{label}"] = pd.array(
            [e["probabilities"][str(label)] if "probabilities" in e else None for e in entries],
            dtype="Float64",
        )
    if error_column or any("error" in e for e in entries):
        table["error"] = pd.array(
            [
                f"{e['error']['code']}: {e['error']['message']}" if "error" in e else None
                for e in entries
            ],
            dtype="string",
        )
    for column in kept.columns:
        table[str(column)] = kept[column].tolist()
    return pd.DataFrame(table)


def format_of(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(
            f"{path}: unknown format {suffix!r}; use one of {', '.join(sorted(EXTENSIONS))}"
        )
    return EXTENSIONS[suffix]


def iter_batches(
    path: str | Path, batch_rows: int, key: str, columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """The table in batches of at most ``batch_rows`` rows. A CSV's key column is read as
    text, so that keys such as 00123 come back exactly as written."""
    fmt = format_of(path)
    if fmt == "csv":
        yield from pd.read_csv(
            path, chunksize=batch_rows, dtype={key: str}, usecols=columns, keep_default_na=True
        )
    elif fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield batch.to_pandas()
    else:
        for frame in pd.read_json(
            path, lines=True, chunksize=batch_rows, dtype=False, convert_dates=False
        ):
            yield frame if columns is None else frame[list(columns)]


def read_table(path: str | Path, key: str | None = None) -> pd.DataFrame:
    """A whole table (a sample: small), read as scoring reads it (``iter_batches``)."""
    batches = list(iter_batches(path, 100_000, key or ""))
    return pd.concat(batches, ignore_index=True) if batches else pd.DataFrame()


def read_keys(path: str | Path, key: str, batch_rows: int = 100_000) -> list[Any]:
    keys: list[Any] = []
    for batch in iter_batches(path, batch_rows, key, columns=[key]):
        if key not in batch.columns:
            raise ValueError(f"{path}: no column {key!r}")
        keys.extend(batch[key].tolist())
    return keys


def columns_of(path: str | Path, key: str) -> list[str]:
    first = next(iter_batches(path, 1, key), None)
    return [] if first is None else [str(c) for c in first.columns]


class TableWriter:
    """Appends frames to a CSV / JSON Lines file, or writes a Parquet file batch by batch
    (Parquet cannot be appended to: ``copy_from`` carries an earlier file's rows over)."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.format = format_of(path)
        self.append = append and self.path.exists()
        self._handle: IO[str] | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._staging = self.path.with_name(self.path.name + ".partial")
        self._copy_from: Path | None = None
        if self.format == "parquet" and self.append:
            self._copy_from = self.path
        elif self.format != "parquet":
            self._handle = self.path.open("a" if self.append else "w", encoding="utf-8")

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "csv":
            assert self._handle is not None
            header = self._handle.tell() == 0
            frame.to_csv(self._handle, header=header, index=False)
        elif self.format == "jsonl":
            assert self._handle is not None
            if len(frame):
                text = frame.to_json(orient="records", lines=True, force_ascii=False)
                self._handle.write(text if text.endswith("\n") else text + "\n")
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._open_parquet(table.schema)
            assert self._parquet is not None
            self._parquet.write_table(table.cast(self._parquet.schema))
        if self._handle is not None:
            self._handle.flush()

    def _open_parquet(self, schema: pa.Schema) -> None:
        if self._copy_from is not None:
            schema = pq.read_schema(self._copy_from)
        self._parquet = pq.ParquetWriter(self._staging, schema)
        if self._copy_from is not None:
            for batch in pq.ParquetFile(self._copy_from).iter_batches():
                self._parquet.write_batch(batch)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._parquet is not None:
            self._parquet.close()
            self._staging.replace(self.path)
        elif self.format == "parquet" and self._copy_from is None:
            pd.DataFrame().to_parquet(self.path)  # nothing was written: an empty table
