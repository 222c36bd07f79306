"""Tables on disk: CSV, Parquet and JSON Lines, chosen by file extension, read in batches
and written incrementally so that a large table is never held whole.

This is the one reader of table files (the client, keyed-score, /predict_file, train.py).
What it promises, whatever the format:

- In a CSV only an empty cell is missing: ``NA``, ``None``, ``null``, ``nan``, ``N/A`` are
  text (a key, a region code), not gaps. Columns of numbers are still read as numbers.
- Key columns come back exactly: a CSV's as the text written (``00123``), a Parquet or
  JSON Lines table's as Python values (an integer key column with a gap is not turned into
  floats, which would round ids above 2^53 onto other keys).
- The ``exact`` columns (a model's category and datetime features, the kept columns) come
  back as the file holds them: a CSV's cells as the text written (``02134`` stays
  ``02134``), a Parquet column with its own Arrow type (``int64`` with nulls stays
  integers, ``decimal(38,2)`` stays decimal), a JSON Lines column as the JSON values.
  ``exact_columns`` names them for a model; ``feature_values`` turns them into what the
  server takes. Kept columns are written back as they were read.
- Parquet decimals in the other columns are read as the numbers they are (float64).
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from keyed_serving.formats import format_of
from keyed_serving.keys import Key, find_key_problems, key_from_cell, typed

# `key="@row"`: a table without a key column is keyed by its rows' 0-based positions, put
# in a column of this name (in the output too).
ROW_KEY = "@row"
ROW_COLUMN = "row"


class InvalidKeys(ValueError):
    """The input's keys are unusable as they are (found before anything is sent)."""


def key_columns(key: str | Sequence[str]) -> list[str]:
    """The key as a caller gives it (a column, several columns, or ``"@row"``) -> the
    names of the key columns in the table it is applied to (``@row`` -> ``["row"]``)."""
    names = [key] if isinstance(key, str) else list(key)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"a key is a column name, a list of them, or {ROW_KEY!r}; got {key!r}")
    if ROW_KEY in names:
        if len(names) > 1:
            raise ValueError(f"{ROW_KEY!r} is a key on its own, not a part of one")
        return [ROW_COLUMN]
    if len(set(names)) != len(names):
        raise ValueError(f"a key column is named twice: {names}")
    return names


def with_row_numbers(frame: pd.DataFrame, start: int = 0) -> pd.DataFrame:
    """The frame with a first column ``row``: each row's 0-based position in its table
    (``start`` is the position of the frame's first row)."""
    if ROW_COLUMN in frame.columns:
        raise ValueError(
            f"the table has a column {ROW_COLUMN!r} already: use it as the key, or rename it "
            f"to key by {ROW_KEY}"
        )
    numbered = frame.reset_index(drop=True)
    numbered.insert(0, ROW_COLUMN, np.arange(start, start + len(frame), dtype=np.int64))
    return numbered


def check_keys(keys: Sequence[Any]) -> list[Key]:
    """A table's key cells as keys (``keyed_serving.keys``); raises ``InvalidKeys`` naming
    the unusable and duplicated ones."""
    clean = [key_from_cell(key) for key in keys]
    problems = find_key_problems(clean)
    _raise_unusable(problems.unusable, "")
    if problems.duplicated:
        shown = [key for _, key, _ in problems.duplicated[:10]]
        raise InvalidKeys(f"{len(problems.duplicated)} duplicated key(s): {shown}")
    return clean


def check_key_columns(columns: Mapping[str, Sequence[Any]]) -> list[tuple[Key, ...]]:
    """Several key columns as one key per row, a tuple of parts. Each part must be a usable
    key (``keyed_serving.keys``); duplicates are judged on the whole tuple."""
    parts: list[list[Key]] = []
    for name, cells in columns.items():
        clean = [key_from_cell(cell) for cell in cells]
        _raise_unusable(find_key_problems(clean).unusable, f" in key column {name!r}")
        parts.append(clean)
    keys = list(zip(*parts, strict=True))
    if len(set(keys)) != len(keys):
        counts = Counter(tuple(map(typed, key)) for key in keys)
        shown = [key for key in dict.fromkeys(keys) if counts[tuple(map(typed, key))] > 1]
        raise InvalidKeys(f"{len(shown)} duplicated key(s) ({', '.join(columns)}): {shown[:10]}")
    return keys


def _raise_unusable(unusable: list[tuple[int, str]], where: str) -> None:
    if unusable:
        positions = [index for index, _ in unusable]
        raise InvalidKeys(
            f"{len(positions)} row(s) without a usable key{where}, first at rows "
            f"{positions[:10]}: {unusable[0][1]}"
        )


def key_as_text(key: Key | tuple[Key, ...]) -> tuple[str, ...]:
    """A key in the one form every file format can hold: its parts as text. A CSV cannot
    tell 17 from "17", so keys read back from files are compared in this form."""
    return tuple(str(part) for part in (key if isinstance(key, tuple) else (key,)))


class ColumnClash(ValueError):
    """A key or kept column has the name of a column the scored table makes itself."""


def output_columns(classes: Sequence[Any] | None) -> list[str]:
    """The columns a scored table makes itself, besides the key columns: ``prediction``,
    one ``probability_<class>`` per class, and ``error``."""
    return ["prediction", *(f"probability_{label}" for label in classes or []), "error"]


def check_output_columns(
    keys: Sequence[str], keep: Sequence[str], classes: Sequence[Any] | None
) -> None:
    """Refuses, before anything is scored, a key or kept column that would take the place
    of another column of the scored table: an input column ``prediction`` (or ``error``,
    or ``probability_<class>``) kept would silently stand where the model's answer goes,
    and a kept key column would be written twice. One rule for the client, keyed-score,
    /predict_file and Spark."""
    produced = output_columns(classes)
    clashes = [name for name in keys if name in produced]
    if clashes:
        raise ColumnClash(
            f"the key column {clashes[0]!r} has the name of a column the scored table makes "
            f"itself ({', '.join(produced)}): rename it in the input"
        )
    kept_keys = [name for name in keep if name in keys]
    if kept_keys:
        raise ColumnClash(
            f"the key column {kept_keys[0]!r} is in the scored table already: do not keep it"
        )
    clashes = [name for name in keep if name in produced]
    if clashes:
        raise ColumnClash(
            f"the kept column(s) {clashes} would replace the scored table's own "
            f"({', '.join(produced)}): do not keep them, or copy them under another name in "
            "the input"
        )
    twice = sorted({name for name in keep if list(keep).count(name) > 1})
    if twice:
        raise ColumnClash(f"the column(s) {twice} are kept twice")


def check_table_columns(
    columns: Sequence[str],
    keys: Sequence[str],
    features: Sequence[str],
    keep: Sequence[str],
    classes: Sequence[Any] | None,
    where: str,
) -> None:
    """Refuses (``ValueError``, naming ``where`` the table is) a table that lacks a key
    column, a feature of the model or a column to keep, or whose key or kept columns clash
    with the scored table's own (``check_output_columns``): for /predict_file and Spark,
    which know all of them before they read a row."""
    present = set(columns)
    absent = [name for name in keys if name not in present]
    if absent:
        raise ValueError(f"no key column {absent[0]!r}; {where} has {list(columns)[:20]}")
    missing = [name for name in features if name not in present]
    if missing:
        raise ValueError(f"{where} lacks the model's features {missing}")
    missing_keep = [name for name in keep if name not in present]
    if missing_keep:
        raise ValueError(f"columns to keep not in {where}: {missing_keep}")
    check_output_columns(keys, keep, classes)


def exact_columns(features: Sequence[Any], keep: Sequence[str] = ()) -> list[str]:
    """The columns to read exactly (see the module's promises) to score a table with a model
    of these features (``FeatureInfo`` or /model_info's dicts): its category and datetime
    features, and the kept columns."""
    names = []
    for feature in features:
        name, kind = (
            (feature["name"], feature["type"])
            if isinstance(feature, dict)
            else (feature.name, feature.type)
        )
        if kind != "number":
            names.append(name)
    return list(dict.fromkeys([*names, *keep]))


def json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def is_missing(value: Any) -> bool:
    """A cell that holds no value: None, NaN, pandas' NA or NaT (as ``json_value`` says)."""
    return json_value(value) is None


def number_or_as_is(value: Any) -> Any:
    """A number feature's cell: text that reads as a number becomes one, and so does a
    decimal. A CSV column with one bad cell is read as text throughout; this keeps that one
    cell the only failure. Text such as "nan" is not a missing value (only an empty cell
    is): it is sent as it is, and refused for that key alone."""
    value = json_value(value)
    if isinstance(value, bool):  # a boolean the model takes as a number (keyed-import)
        return float(value)
    if isinstance(value, decimal.Decimal):
        return None if value.is_nan() else float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # judged, and refused for that key alone, by the server
        return value if math.isnan(number) else number
    return value


def category_or_as_is(value: Any) -> Any:
    """A category feature's cell as the text the model was trained on: training takes a
    column of booleans or numbers mixed with text as the categories "True", "False", "7"
    (``str`` of each value), and the server takes categories as strings. Read exactly
    (``exact_columns``), a cell is the text in the file, or the exact value of a typed
    column (an integer, never a float made of it), so ``str`` gives what was written."""
    value = json_value(value)
    if isinstance(value, float) and value.is_integer():
        # pandas' own form of an integer column with a gap is float64 (a Parquet or JSON
        # Lines table of it holds 94105.0): the category is the integer's text.
        return str(int(value))
    if isinstance(value, bool | int | float | decimal.Decimal | datetime.date):
        return str(value)
    return value


def datetime_or_as_is(value: Any) -> Any:
    """A datetime feature's cell as the server takes it: ISO 8601 text. A CSV or JSON Lines
    cell is sent as written (the server parses it); a date-time value (a Parquet or
    DataFrame column of datetimes) as its ISO text."""
    value = json_value(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def feature_values(cells: Sequence[Any], feature_type: str) -> list[Any]:
    """A feature column's cells as the server takes them (see the functions above)."""
    convert = {
        "number": number_or_as_is,
        "datetime": datetime_or_as_is,
    }.get(feature_type, category_or_as_is)
    return [convert(cell) for cell in cells]


def feature_column(cells: pd.Series, feature_type: str) -> list[Any]:
    """``feature_values`` of a frame's column, without a call per cell where the column's
    dtype already says what each cell becomes: numbers stay the numbers they are, NaN is
    missing (a float column of a million rows was a third of the client's time)."""
    if feature_type != "number" or not isinstance(cells.dtype, np.dtype):
        return feature_values(cells.tolist(), feature_type)  # pandas' own dtypes: NA cells
    if cells.dtype.kind in "iu":
        return list(cells.tolist())
    if cells.dtype.kind == "f":
        values = cells.to_numpy()
        column = values.astype(object)
        column[np.isnan(values)] = None
        return list(column.tolist())
    return feature_values(cells.tolist(), feature_type)


def scored_table(
    keys: Mapping[str, Sequence[Key]],
    entries: Sequence[dict[str, Any]],
    classes: Sequence[Any] | None,
    kept: pd.DataFrame,
    error_column: bool = False,
) -> pd.DataFrame:
    """``scored_columns`` for answers given one entry per row ({key, prediction,
    probabilities} or {key, error}), as the server's row format has them."""
    probabilities = {
        str(label): [
            e["probabilities"][str(label)] if "probabilities" in e else None for e in entries
        ]
        for label in classes or []
    }
    errors = [
        f"{e['error']['code']}: {e['error']['message']}" if "error" in e else None for e in entries
    ]
    return scored_columns(
        keys,
        [e.get("prediction") for e in entries],
        probabilities,
        classes,
        kept,
        errors if error_column or any(error is not None for error in errors) else None,
    )


def scored_columns(
    keys: Mapping[str, Sequence[Key]],
    predictions: Sequence[Any],
    probabilities: Mapping[str, Sequence[float | None]] | None,
    classes: Sequence[Any] | None,
    kept: pd.DataFrame,
    errors: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """The scored rows: the key columns (name -> values), ``prediction``, one
    ``probability_<class>`` column per class (``probabilities`` by ``str(class)``; a class
    without one is missing), an ``error`` column when ``errors`` is given (a reason, or
    None), then the kept columns. Typed columns, so that every batch of a file has the same
    schema. The one writer of scored tables (the client, keyed-score, /predict_file)."""
    rows = len(predictions)
    table: dict[str, Any] = {name: list(values) for name, values in keys.items()}
    table["prediction"] = list(predictions)
    for label in classes or []:
        column = (probabilities or {}).get(str(label))
        table[f"probability_{label}"] = pd.array(
            [None] * rows if column is None else column, dtype="Float64"
        )
    if errors is not None:
        table["error"] = pd.array(errors, dtype="string")
    for column_name in kept.columns:
        # The column itself, not a list of its values: it keeps the type it was read with
        # (a Parquet decimal stays a decimal, integers with gaps stay integers).
        table[str(column_name)] = kept[column_name].reset_index(drop=True)
    return pd.DataFrame(table)


def iter_batches(
    path: str | Path,
    batch_rows: int,
    keys: str | Sequence[str] = (),
    columns: Sequence[str] | None = None,
    exact: Sequence[str] = (),
) -> Iterator[pd.DataFrame]:
    """The table in batches of at most ``batch_rows`` rows, the ``keys`` and ``exact``
    columns exact (see the module's promises); ``columns`` reads only those."""
    key_names = [keys] if isinstance(keys, str) else list(keys)
    fmt = format_of(path)
    if fmt == "csv":
        yield from pd.read_csv(
            path,
            chunksize=batch_rows,
            dtype={name: str for name in [*key_names, *exact]},
            usecols=columns,
            keep_default_na=False,
            na_values=[""],
        )
    elif fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield _parquet_frame(batch, key_names, exact)
    else:
        yield from _jsonl_batches(Path(path), batch_rows, [*key_names, *exact], columns)


def _parquet_frame(
    batch: pa.RecordBatch, keys: Sequence[str], exact: Sequence[str] = ()
) -> pd.DataFrame:
    arrays = []
    for name, array in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_decimal(array.type) and name not in keys and name not in exact:
            array = pc.cast(array, pa.float64())  # numbers, not decimal.Decimal objects
        arrays.append(array)
    frame = pa.RecordBatch.from_arrays(arrays, names=batch.schema.names).to_pandas()
    for name in exact:
        if name in frame.columns and name not in keys:
            # The column with its own Arrow type: its values are the file's exactly (an
            # int64 with nulls is not made floats), and written back as that type.
            frame[name] = pd.Series(
                pd.arrays.ArrowExtensionArray(batch.column(name)), name=name, copy=False
            )
    for name in keys:
        if name in frame.columns:
            frame[name] = pd.Series(batch.column(name).to_pylist(), dtype=object)
    return frame


def _jsonl_batches(
    path: Path, batch_rows: int, exact: Sequence[str], columns: Sequence[str] | None
) -> Iterator[pd.DataFrame]:
    """JSON Lines read with orjson, a line at a time: integers stay integers (pandas' reader
    turns an integer column with a null into floats, and fails on an integer above 2^64)."""
    with path.open("rb") as handle:
        records: list[Any] = []
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path.name}: line {number} is not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path.name}: line {number} is not a JSON object")
            records.append(record)
            if len(records) == batch_rows:
                yield _records_frame(records, exact, columns)
                records = []
        if records:
            yield _records_frame(records, exact, columns)


def _records_frame(
    records: list[dict[str, Any]], exact: Sequence[str], columns: Sequence[str] | None
) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    for name in exact:
        if name in frame.columns:
            frame[name] = pd.Series([r.get(name) for r in records], dtype=object)
    return frame if columns is None else frame[[c for c in columns if c in frame.columns]]


def read_table(
    path: str | Path, keys: str | Sequence[str] = (), exact: Sequence[str] = ()
) -> pd.DataFrame:
    """A whole table (for training, or a model's sample), read as ``iter_batches`` reads it."""
    batches = list(iter_batches(path, 100_000, keys, exact=exact))
    if not batches:
        return pd.DataFrame()
    return pd.concat(batches, ignore_index=True) if len(batches) > 1 else batches[0]


def read_training_table(
    path: str | Path, keys: str | Sequence[str] = (), target: str | None = None
) -> pd.DataFrame:
    """A table to train on, read as it will be scored. A CSV's columns that are not numbers
    (text, and columns pandas takes for booleans) are read as the text written, which is
    what keyed-score and /predict_file send for a category feature: a CSV's ``true`` is the
    category "true" in training and in scoring alike. The target keeps pandas' reading
    (its labels)."""
    table = read_table(path, keys)
    if format_of(path) != "csv":
        return table
    skipped = {target, *([keys] if isinstance(keys, str) else keys)}
    text = [
        str(name)
        for name in table.columns
        if name not in skipped
        and (
            not pd.api.types.is_numeric_dtype(table[name])
            or pd.api.types.is_bool_dtype(table[name])
        )
    ]
    return read_table(path, keys, exact=text) if text else table


def read_keys(path: str | Path, keys: str | Sequence[str], batch_rows: int = 100_000) -> Any:
    """The key cells of a table: a list for one key column; for several, a dict of lists by
    column name."""
    names = [keys] if isinstance(keys, str) else list(keys)
    cells: dict[str, list[Any]] = {name: [] for name in names}
    for batch in iter_batches(path, batch_rows, names, columns=names):
        for name in names:
            if name not in batch.columns:
                raise ValueError(f"{path}: no column {name!r}")
            cells[name].extend(batch[name].tolist())
    return cells[names[0]] if isinstance(keys, str) else cells


def columns_of(path: str | Path, keys: str | Sequence[str] = ()) -> list[str]:
    first = next(iter_batches(path, 1, keys), None)
    return [] if first is None else [str(c) for c in first.columns]


def drop_unfinished_line(path: Path) -> bool:
    """A CSV or JSON Lines file cut off mid-line (a run interrupted while writing) ends
    without a newline: remove that half line. True when something was removed."""
    if format_of(path) == "parquet" or not path.exists():
        return False  # Parquet is written in whole part files (TableWriter)
    with path.open("rb+") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        keep = 0
        step = 64 * 1024
        position = size
        while position > 0:  # find the last newline, reading backwards
            start = max(0, position - step)
            handle.seek(start)
            found = handle.read(position - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            position = start
        handle.truncate(keep)
    return True


def recover_interrupted(path: str | Path) -> bool:
    """Makes what a run stopped before ``TableWriter.close`` (killed) left at ``path`` one
    whole table: a CSV's or JSON Lines' half-written last line is removed; a Parquet
    output's finished part files are merged into it. True when something was changed."""
    path = Path(path)
    if format_of(path) != "parquet":
        return drop_unfinished_line(path)
    _staging(path).unlink(missing_ok=True)  # a merge the kill cut short
    parts = _finished_parts(_parts_directory(path))
    if parts:
        _merge_parts(path, parts)
    return bool(parts)


def json_lines(frame: pd.DataFrame) -> str:
    """The frame as JSON Lines, each value exactly: a float to the last bit (pandas'
    ``to_json`` writes 10 significant digits), a decimal as its exact text, a date-time as
    ISO 8601 text, a gap as null."""
    columns = [str(name) for name in frame.columns]
    values = [frame[name].astype(object).tolist() for name in frame.columns]
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
    return b"".join(
        orjson.dumps(dict(zip(columns, row, strict=True)), default=_json_default, option=option)
        for row in zip(*values, strict=True)
    ).decode()


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: pandas' gaps, decimals, timestamps, NumPy scalars."""
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, decimal.Decimal):
        return None if value.is_nan() else str(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class TableWriter:
    """Writes a table a batch at a time, so that a run stopped at any moment, even by
    SIGKILL, keeps every batch it wrote:

    - CSV and JSON Lines: appended and flushed batch by batch (``recover_interrupted``
      removes a half-written last line).
    - Parquet cannot be appended to, and a file is unreadable until its footer is written:
      each batch is a Parquet file of its own in ``<path>.parts/``, written under a hidden
      name and then renamed (so a part is whole or absent, and any Parquet reader can read
      the folder), and ``close`` merges the output and the parts into ``path``. Parts a
      killed run left are merged by ``recover_interrupted`` or the next appending writer.

    Without ``append``, a new table: what an earlier run left at ``path`` is removed at once.
    Every batch takes the column types of the table's first rows.
    """

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.format = format_of(path)
        self.parts = _parts_directory(self.path)
        self._handle: IO[str] | None = None
        self._schema: pa.Schema | None = None
        self._empty: pa.Table | None = None
        if self.format != "parquet":
            self.append = append and self.path.exists()
            self._handle = self.path.open("a" if self.append else "w", encoding="utf-8")
            return
        self.append = append
        if not append:
            self.path.unlink(missing_ok=True)
            _staging(self.path).unlink(missing_ok=True)
            _remove_parts(self.parts)
        finished = _finished_parts(self.parts)
        self._next_part = int(finished[-1].stem.split("-")[1]) + 1 if finished else 0
        sources = _sources(self.path, finished)
        if sources:
            self._schema = pq.read_schema(sources[0])

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "csv":
            assert self._handle is not None
            header = self._handle.tell() == 0
            frame.to_csv(self._handle, header=header, index=False)
        elif self.format == "jsonl":
            assert self._handle is not None
            if len(frame):
                self._handle.write(json_lines(frame))
        else:
            self._write_part(pa.Table.from_pandas(frame, preserve_index=False))
        if self._handle is not None:
            self._handle.flush()

    def _write_part(self, table: pa.Table) -> None:
        if not table.num_rows:  # its columns' types say nothing (an empty column is null)
            self._empty = table
            return
        if self._schema is None:
            self._schema = table.schema
        self.parts.mkdir(exist_ok=True)
        name = f"part-{self._next_part:06d}.parquet"
        hidden = self.parts / f".{name}.tmp"
        pq.write_table(table.cast(self._schema), hidden)
        hidden.replace(self.parts / name)
        self._next_part += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            return
        parts = _finished_parts(self.parts)
        if parts:
            _merge_parts(self.path, parts)
        elif not self.path.exists():  # nothing was written: an empty table
            pq.write_table(self._empty if self._empty is not None else pa.table({}), self.path)
        _remove_parts(self.parts)


def _parts_directory(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _finished_parts(parts: Path) -> list[Path]:
    """The whole part files of a Parquet output, in the order written. A part a killed run
    was writing (still under its hidden name) is removed."""
    if not parts.is_dir():
        return []
    for unfinished in parts.glob(".part-*"):
        unfinished.unlink()
    return sorted(parts.glob("part-*.parquet"), key=lambda part: int(part.stem.split("-")[1]))


def _sources(path: Path, parts: list[Path]) -> list[Path]:
    """The files a Parquet output's rows are in: the output (when it has rows), its parts."""
    whole = path.exists() and pq.ParquetFile(path).metadata.num_rows > 0
    return [path, *parts] if whole else parts


def _merge_parts(path: Path, parts: list[Path]) -> None:
    """The output's rows, then its parts', into ``path``: written aside and then renamed,
    so a run killed while merging leaves the output and its parts as they were. (Killed
    between the rename and removing the parts, the parts' rows are in the output twice:
    keyed-score --resume keeps one of each key.)"""
    sources = _sources(path, parts)
    schema = pq.read_schema(sources[0])
    staging = _staging(path)
    with pq.ParquetWriter(staging, schema) as writer:
        for source in sources:
            for batch in pq.ParquetFile(source).iter_batches():
                writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    staging.replace(path)
    _remove_parts(_parts_directory(path))


def _remove_parts(parts: Path) -> None:
    if parts.is_dir():
        for part in parts.iterdir():
            part.unlink()
        parts.rmdir()
