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
--resume continues; 130 (Ctrl-C) or 143 (SIGTERM) when the run was asked to stop: what
was answered until then, to the last finished request, is in OUTPUT, and --resume
continues.
--resume skips the keys OUTPUT already holds answered, after removing any row an
interrupted run left half written. It also continues a run that was killed (SIGKILL):
the batches written until then are kept (a Parquet output's in OUTPUT.parts/, whole
Parquet files merged into OUTPUT at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keyed_serving.client.keyed_client import KeyedClient, ScoringStopped, http_transport
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
    exact_columns,
    iter_batches,
    key_as_text,
    key_columns,
    read_keys,
    read_table,
    recover_interrupted,
    with_row_numbers,
)

STOPPED = 3
# Ctrl-C and SIGTERM stop a run cleanly; it exits 128 + the signal's number (130, 143), as a
# shell reports a process such a signal ended.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After a stop is asked for, the batch in hand has this long to end before it is cancelled
# (it ends at once unless every request is waiting out a server's Retry-After).
STOP_GRACE_S = 5.0
_Scored = TypeVar("_Scored")


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
    17 from "17"). What an interrupted run left (after ``recover_interrupted``) is removed
    first: a row with neither a prediction nor an error, a key written twice."""
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


class Interrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM asked the run to stop."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopSignals:
    """SIGINT and SIGTERM, caught for the whole run. Before anything is sent, a signal
    ends the run at once (``Interrupted``). While scoring, the first one stops the run: the
    requests in flight are given up (``StoppableTransport``), the chunks already answered are
    written, and the batch in hand is cancelled outright if it has not ended within
    ``STOP_GRACE_S`` (a client waiting out a server's Retry-After) or at a second signal."""

    def __init__(self, restore: bool = True) -> None:
        self.signum: int | None = None
        self._restore = restore
        self._ended = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._batch: asyncio.Future[Any] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self._ended = True
        if self._restore:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self._ended or (self._loop is not None and self._loop.is_closed()):
            return  # the run is saying how it ended, or has said it
        if self._loop is None:
            if first:
                raise Interrupted(signum)  # nothing was sent: nothing to finish
            return
        self._loop.call_soon_threadsafe(self._stop if first else self._cancel_batch)

    def _stop(self) -> None:
        assert self._stopped is not None and self._loop is not None
        self._stopped.set()
        self._loop.call_later(STOP_GRACE_S, self._cancel_batch)

    def _cancel_batch(self) -> None:
        if self._batch is not None:
            self._batch.cancel()

    def scoring(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on signals stop the run rather than end it (called in ``loop``)."""
        self._loop = loop
        self._stopped = asyncio.Event()
        if self.signum is not None:
            self._stop()

    async def score(self, batch: Coroutine[Any, Any, _Scored]) -> _Scored | None:
        """The batch's answer; None if it was cancelled (see the class)."""
        self._batch = asyncio.ensure_future(batch)
        try:
            return await self._batch
        except asyncio.CancelledError:
            if self._batch.cancelled() and not _current_task_cancelling():
                return None
            raise
        finally:
            self._batch = None

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    async def wait(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    @property
    def scoring_started(self) -> bool:
        return self._stopped is not None


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class StoppableTransport(httpx.AsyncBaseTransport):
    """The client's HTTP transport, which gives up its requests once a stop is asked for:
    the request raises ``Interrupted``, which ends the client's run as any unexpected error
    does, with the chunks answered until then (``ScoringStopped.partial``)."""

    def __init__(self, stop: StopSignals, concurrency: int) -> None:
        self._stop = stop
        self._concurrency = concurrency
        self._sending: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._stop.check()
        if self._sending is None:  # one per client session (KeyedClient opens one a batch)
            self._sending = http_transport(self._concurrency)  # KeyedClient's own
        if not self._stop.scoring_started:
            return await self._sending.handle_async_request(request)
        answer = asyncio.ensure_future(self._sending.handle_async_request(request))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([answer, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not answer.done():
                answer.cancel()
        if answer.done() and not answer.cancelled():  # answered (or failed) before the stop
            return answer.result()
        await asyncio.wait([answer])  # its connection closed
        self._stop.check()
        raise AssertionError("a request was given up without a stop")

    async def aclose(self) -> None:
        if self._sending is not None:
            await self._sending.aclose()
            self._sending = None


def resume_command(argv: list[str]) -> str:
    """The command that resumes this run."""
    return shlex.join(["keyed-score", *argv, *([] if "--resume" in argv else ["--resume"])])


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Run as a program (argv from the command line), the handlers stay until the process
    # ends: a late Ctrl-C must not print a traceback under the run's last line.
    with StopSignals(restore=argv is not None) as stop:
        try:
            return score_file(args, sys.argv[1:] if argv is None else list(argv), stop)
        except Interrupted as exc:
            print(f"keyed-score: {exc} before anything was sent", file=sys.stderr)
            return 128 + exc.signum


def score_file(args: argparse.Namespace, argv: list[str], stop: StopSignals) -> int:
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
        if args.resume:
            recover_interrupted(out)  # a killed run's half line, or unmerged Parquet parts
        if args.resume and out.exists():
            if len({key_as_text(k) for k in keys}) != len(keys):
                raise ValueError(
                    "keys that differ only in type (17 and '17') cannot be told apart in "
                    f"{out}; score into a new output instead of --resume"
                )
            done = completed_keys(out, names)
        client = KeyedClient(
            args.url,
            token=args.token,
            chunk_rows=args.chunk_size,
            concurrency=args.concurrency,
            transport=StoppableTransport(stop, args.concurrency),
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
    run = asyncio.run(score_batches(args, client, names, keep, exact, done, to_score, stop))
    elapsed = time.monotonic() - started
    if run.failed:
        with errors_path.open("w", encoding="utf-8") as errors_file:
            for key, reason in run.failed.items():
                shown = dict(zip(names, key, strict=True)) if isinstance(key, tuple) else key
                errors_file.write(json.dumps({"key": shown, "error": reason}) + "\n")
    else:
        errors_path.unlink(missing_ok=True)
    skipped = len(keys) - to_score
    failures = f"; {len(run.failed):,} keys failed, see {errors_path}" if run.failed else ""
    if run.interrupted is not None:
        print(
            f"keyed-score: {run.interrupted}: {skipped + run.written:,} of {len(keys):,} keys "
            f"are in {out}{failures}; to score the rest: {resume_command(argv)}",
            file=sys.stderr,
        )
        return 128 + run.interrupted.signum
    if run.stopped is not None:
        print(
            f"keyed-score: {run.stopped}; the keys scored until then are in {out}, and "
            f"--resume scores the rest",
            file=sys.stderr,
        )
        return STOPPED
    scored_rows = to_score - len(run.failed)
    summary = (
        f"keyed-score: {scored_rows:,} keys scored in {elapsed:.1f} s "
        f"({scored_rows / max(elapsed, 1e-9):,.0f} rows/s)"
        + (f", {skipped:,} already in {out}" if skipped else "")
    )
    print(summary + failures, file=sys.stderr)
    return 1 if run.failed else 0


@dataclass
class _Run:
    """How a run ended: rows written, keys failed, and what stopped it early, if anything."""

    written: int = 0
    failed: dict[Any, str] = field(default_factory=dict)
    stopped: ScoringStopped | None = None
    interrupted: Interrupted | None = None


async def score_batches(
    args: argparse.Namespace,
    client: KeyedClient,
    names: list[str],
    keep: list[str],
    exact: list[str],
    done: set[tuple[str, ...]],
    to_score: int,
    stop: StopSignals,
) -> _Run:
    """Scores the input a batch at a time, writing each as it is answered; a stop (see
    ``StopSignals``) writes the chunks already answered and ends the run."""
    stop.scoring(asyncio.get_running_loop())
    run = _Run()
    row_keyed = args.key == ROW_KEY
    started = time.monotonic()
    writer = TableWriter(Path(args.out), append=bool(done))
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
                if stop.signum is not None:
                    break
                if row_keyed:
                    batch = with_row_numbers(batch, first_row)
                    first_row += len(batch)
                if done:
                    fresh = [key_as_text(k) not in done for k in batch_keys(batch, names)]
                    batch = batch[fresh]
                    if batch.empty:
                        continue
                try:
                    answer = await stop.score(
                        client.ascore(batch, names, keep, on_progress=advance)
                    )
                except ScoringStopped as exc:
                    if not isinstance(exc.cause, Interrupted):
                        run.stopped = exc
                    answer = exc.partial, exc.failed
                if answer is not None:  # None: cancelled, nothing of the batch kept
                    scored, batch_failed = answer
                    writer.write(scored)
                    run.written += len(scored)
                    run.failed.update(batch_failed)
                if run.stopped is not None or stop.signum is not None:
                    break
            unsettled = run.written + len(run.failed) < to_score
            if run.stopped is None and stop.signum is not None and unsettled:
                run.interrupted = Interrupted(stop.signum)
    finally:
        writer.close()
    return run


if __name__ == "__main__":
    sys.exit(main())
