"""keyed-score: score a table file by key across one or more servers.

    keyed-score customers.csv --key customer_id --url http://a:3000 --url http://b:3000 \\
        --out scored.parquet [--keep region,plan] [--resume]

Reads CSV, Parquet or JSON Lines (by extension) in batches and writes the output as it
goes: the key, the prediction, one probability column per class, and the kept columns,
in input order. Exit status 0 only when every key is answered; otherwise 1, with one
line per failed key in OUTPUT.errors.jsonl. Duplicate or empty keys are reported (exit
2) before anything is sent. --resume skips the keys OUTPUT already holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keyed_serving.client import KeyedClient
from keyed_serving.tables import (
    InvalidKeys,
    TableWriter,
    check_keys,
    columns_of,
    format_of,
    iter_batches,
    read_keys,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="keyed-score", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("input", help="CSV, Parquet or JSON Lines file")
    parser.add_argument("--key", required=True, help="the key column")
    parser.add_argument("--url", action="append", required=True, help="a server; repeatable")
    parser.add_argument("--out", required=True, help="output file (.csv, .parquet, .jsonl)")
    parser.add_argument("--chunk-size", type=int, default=5000, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--keep", default="", help="columns to copy to the output, a,b,c")
    parser.add_argument("--token", help="bearer token for servers that ask for one")
    parser.add_argument("--resume", action="store_true", help="skip keys OUTPUT already has")
    parser.add_argument("--batch-rows", type=int, default=50_000, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    errors_path = out.with_name(out.name + ".errors.jsonl")
    keep = [c for c in args.keep.split(",") if c]
    try:
        for path in (args.input, out):
            format_of(path)  # raises on an extension it does not know
        keys = check_keys(read_keys(args.input, args.key))
        present = columns_of(args.input, args.key)
        missing = [c for c in keep if c not in present]
        if missing:
            raise ValueError(f"columns to keep not in {args.input}: {missing}")
    except (InvalidKeys, ValueError, FileNotFoundError) as exc:
        print(f"keyed-score: {exc}; nothing was sent", file=sys.stderr)
        return 2

    done: set[tuple[type, Any]] = set()
    if args.resume and out.exists():
        done = {(type(k), k) for k in check_keys(read_keys(out, args.key))}
    to_score = sum(1 for k in keys if (type(k), k) not in done)
    client = KeyedClient(
        args.url, token=args.token, chunk_rows=args.chunk_size, concurrency=args.concurrency
    )
    started = time.monotonic()
    failed: dict[Any, str] = {}
    writer = TableWriter(out, append=args.resume)
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

            for batch in iter_batches(args.input, args.batch_rows, args.key):
                batch_keys = check_keys(batch[args.key].tolist())
                fresh = [(type(k), k) not in done for k in batch_keys]
                batch = batch[fresh]
                if batch.empty:
                    continue
                scored, batch_failed = asyncio.run(
                    client.ascore(batch, args.key, keep, on_progress=advance)
                )
                writer.write(scored)
                failed.update(batch_failed)
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    scored_rows = to_score - len(failed)
    skipped = len(keys) - to_score
    summary = (
        f"keyed-score: {scored_rows:,} keys scored in {elapsed:.1f} s "
        f"({scored_rows / max(elapsed, 1e-9):,.0f} rows/s)"
        + (f", {skipped:,} already in {out}" if skipped else "")
    )
    if failed:
        with errors_path.open("w", encoding="utf-8") as errors_file:
            for key, reason in failed.items():
                errors_file.write(json.dumps({"key": key, "error": reason}) + "\n")
        print(f"{summary}; {len(failed):,} keys failed, see {errors_path}", file=sys.stderr)
        return 1
    errors_path.unlink(missing_ok=True)
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
