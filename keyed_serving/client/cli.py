"""keyed-score: score a table file by key across one or more servers.

    keyed-score customers.csv --key customer_id --url http://a:3000 --url http://b:3000 \\
        --out scored.parquet [--keep region,plan] [--resume]

Reads CSV, Parquet or JSON Lines (by extension) in batches and writes the output as it
goes: the key, the prediction, one probability column per class, and the kept columns,
in input order. In a CSV only an empty cell is missing (NA, null, nan are text).

--key takes one column, several (--key region,customer_id: a key of several parts, all
kept in the output), or @row: a table without a key column is keyed by each row's 0-based
position, written to the output as a first column "row".

Exit status 0 only when every key is answered; 1 when some keys failed, with one line per
failed key in OUTPUT.errors.jsonl; 2 when the input cannot be scored (unusable or
duplicate keys, a missing column, no server answering), before anything is sent; 3 when
the run stopped on an unexpected error: what was scored until then is in OUTPUT, and
--resume continues.
--resume skips the keys OUTPUT already holds answered, after removing any row an
interrupted run left half written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keyed_serving.client.keyed_client import KeyedClient, ScoringStopped
from keyed_serving.formats import format_of
from keyed_serving.tables import (
    ROW_COLUMN,
    ROW_KEY,
    InvalidKeys,
    TableWriter,
    check_key_columns,
    check_keys,
    check_output_columns,
    columns_of,
    drop_unfinished_line,
    exact_columns,
    iter_batches,
    key_as_text,
    key_columns,
    read_keys,
    read_table,
    with_row_numbers,
)

STOPPED = 3


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="keyed-score", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("input", help="CSV, Parquet or JSON Lines file")
    parser.add_argument(
        "--key",
        required=True,
        help=f"the key column; several as a,b; {ROW_KEY} for the rows' positions",
    )
    parser.add_argument("--url", action="append", required=True, help="a server; repeatable")
    parser.add_argument("--out", required=True, help="output file (.csv, .parquet, .jsonl)")
    parser.add_argument("--chunk-size", type=int, default=5000, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--keep", default="", help="columns to copy to the output, a,b,c")
    parser.add_argument("--token", help="bearer token for servers that ask for one")
    parser.add_argument("--resume", action="store_true", help="skip keys OUTPUT already has")
    parser.add_argument("--batch-rows", type=int, default=50_000, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def batch_keys(batch: pd.DataFrame, names: Sequence[str]) -> list[Any]:
    """A batch's keys, checked (``keyed_serving.keys``): values, or tuples for a key of
    several columns."""
    if len(names) == 1:
        return check_keys(batch[names[0]].tolist())
    return list(check_key_columns({n: batch[n].tolist() for n in names}))


def input_keys(path: str, names: Sequence[str], row_keyed: bool) -> list[Any]:
    """Every key of the input, checked before anything is sent."""
    if row_keyed:
        first = columns_of(path)[:1]
        rows = sum(len(batch) for batch in iter_batches(path, 100_000, columns=first))
        return list(range(rows))
    cells = read_keys(path, list(names))
    if len(names) == 1:
        return check_keys(cells[names[0]])
    return list(check_key_columns(cells))


def completed_keys(out: Path, names: Sequence[str]) -> set[tuple[str, ...]]:
    """The keys OUTPUT holds answered (a prediction or an error), as text (a CSV cannot tell
    17 from "17"). What an interrupted run left is removed first: a half-written last line,
    a row with neither a prediction nor an error, a key written twice."""
    drop_unfinished_line(out)
    exact = columns_of(out) if out.stat().st_size else []  # rewritten as it was read
    frame = read_table(out, list(names), exact) if exact else pd.DataFrame()
    if frame.empty:
        return set()
    absent = [n for n in names if n not in frame.columns]
    if absent:
        raise ValueError(f"{out} has no key column {absent[0]!r}; cannot resume into it")
    answered = pd.Series(False, index=frame.index)
    for column in ("prediction", "error"):
        if column in frame.columns:
            answered |= frame[column].notna()
    texts = pd.Series(
        [key_as_text(parts) for parts in zip(*(frame[n].tolist() for n in names), strict=True)],
        index=frame.index,
    )
    kept = answered & ~texts.duplicated()
    if not kept.all():
        staging = out.with_name(f"{out.stem}.resume{out.suffix}")
        writer = TableWriter(staging)
        try:
            writer.write(frame[kept])
        finally:
            writer.close()
        staging.replace(out)
    return set(texts[kept])


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    errors_path = out.with_name(out.name + ".errors.jsonl")
    keep = [c for c in args.keep.split(",") if c]
    row_keyed = args.key == ROW_KEY
    try:
        names = key_columns(ROW_KEY if row_keyed else args.key.split(","))
        for path in (args.input, out):
            format_of(path)  # raises on an extension it does not know
        present = columns_of(args.input, [] if row_keyed else names)
        if row_keyed and ROW_COLUMN in present:
            raise ValueError(
                f"{args.input} has a column {ROW_COLUMN!r}: key by it (--key {ROW_COLUMN}) or "
                f"rename it to key by {ROW_KEY}"
            )
        missing = [c for c in keep if c not in present]
        if missing:
            raise ValueError(f"columns to keep not in {args.input}: {missing}")
        keys = input_keys(args.input, names, row_keyed)
        done: set[tuple[str, ...]] = set()
        if args.resume and out.exists():
            if len({key_as_text(k) for k in keys}) != len(keys):
                raise ValueError(
                    "keys that differ only in type (17 and '17') cannot be told apart in "
                    f"{out}; score into a new output instead of --resume"
                )
            done = completed_keys(out, names)
        client = KeyedClient(
            args.url, token=args.token, chunk_rows=args.chunk_size, concurrency=args.concurrency
        )
        info = client.model_info()
        features = [f["name"] for f in info["features"]]
        absent = [n for n in features if n not in present]
        if absent:
            raise ValueError(f"{args.input} lacks the model's features {absent}")
        check_output_columns(names, keep, info.get("classes"))
        exact = exact_columns(info["features"], keep)  # category cells as written
    except (InvalidKeys, ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"keyed-score: {exc}; nothing was sent", file=sys.stderr)
        return 2

    to_score = sum(1 for k in keys if key_as_text(k) not in done) if done else len(keys)
    started = time.monotonic()
    failed: dict[Any, str] = {}
    stopped: ScoringStopped | None = None
    writer = TableWriter(out, append=bool(done))
    try:
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            disable=not sys.stderr.isatty(),
            transient=True,
        ) as progress:
            task = progress.add_task("scoring", total=to_score, rate="-")

            def advance(rows: int) -> None:
                progress.advance(task, rows)
                done_rows = progress.tasks[0].completed
                rate = done_rows / max(time.monotonic() - started, 1e-9)
                progress.update(task, rate=f"{rate:,.0f}")

            first_row = 0
            keys_read = [] if row_keyed else names
            for batch in iter_batches(args.input, args.batch_rows, keys_read, exact=exact):
                if row_keyed:
                    batch = with_row_numbers(batch, first_row)
                    first_row += len(batch)
                if done:
                    fresh = [key_as_text(k) not in done for k in batch_keys(batch, names)]
                    batch = batch[fresh]
                    if batch.empty:
                        continue
                try:
                    scored, batch_failed = asyncio.run(
                        client.ascore(batch, names, keep, on_progress=advance)
                    )
                except ScoringStopped as exc:
                    stopped = exc
                    scored, batch_failed = exc.partial, exc.failed
                writer.write(scored)
                failed.update(batch_failed)
                if stopped is not None:
                    break
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    if failed:
        with errors_path.open("w", encoding="utf-8") as errors_file:
            for key, reason in failed.items():
                shown = dict(zip(names, key, strict=True)) if isinstance(key, tuple) else key
                errors_file.write(json.dumps({"key": shown, "error": reason}) + "\n")
    else:
        errors_path.unlink(missing_ok=True)
    if stopped is not None:
        print(
            f"keyed-score: {stopped}; the keys scored until then are in {out}, and "
            f"--resume scores the rest",
            file=sys.stderr,
        )
        return STOPPED
    scored_rows = to_score - len(failed)
    skipped = len(keys) - to_score
    summary = (
        f"keyed-score: {scored_rows:,} keys scored in {elapsed:.1f} s "
        f"({scored_rows / max(elapsed, 1e-9):,.0f} rows/s)"
        + (f", {skipped:,} already in {out}" if skipped else "")
    )
    if failed:
        print(f"{summary}; {len(failed):,} keys failed, see {errors_path}", file=sys.stderr)
        return 1
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
