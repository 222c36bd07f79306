"""The server's capture: a bounded buffer per worker, written to Parquet off the request path.

The request path only hands over what it already holds (``CaptureWriter.record``: one
``Captured`` of references, appended to a list under a lock). A thread of the worker turns
the buffer into Arrow tables every ``CONVERT_EVERY_S`` (compact, and no longer objects
the collector walks), and writes them every ``flush_s`` seconds, or sooner once they take
half the buffer (at 300,000 rows/s a 5 s interval would not fit a 500,000-row buffer):
one file per (model, version, date) per write, whole under a temporary name and renamed
(:func:`.files.write_atomic`). ``close`` (the entry's shutdown, after its drain) writes what
is left, so a SIGTERM loses nothing; a SIGKILL loses what was answered since the last
write: at most one interval (plus the time a write takes).

Rows are dropped, never waited for, and the answer is the same:
- ``buffer_full``: the buffer holds ``buffer_rows`` rows waiting (writes fall behind);
- ``max_bytes``: the capture directory holds ``max_bytes`` (the files found at start and
  rescanned every minute, plus this worker's writes since);
- ``write_failed``: the file could not be written (an unwritable directory, a full disk).
Each drop is counted as it happens (``on_dropped``, the ``keyed_capture_dropped_total``
metric), logged at most once a minute, and written to ``drops/date=…/`` once it can be.

Sampling (``sample`` < 1) keeps a key when a stable hash of (key text, key type) falls
below it: the same keys on every worker, in every run (BLAKE2b, not Python's ``hash``).

Joining small files: each worker merges its own small files (below ``small_bytes`` as
written) of a partition once it holds more than ``merge_after`` of them, when a date is
over, and at ``close``; a merged file is merged again with later ones until it passes
``merge_bytes``. Files written large (heavy traffic) are left as they are: at most
``merge_after`` + 1 small files per worker and partition at any time, one once a day is
over.
The merged file is renamed in before the parts are removed. What a reader may see:
between that rename and the removal (a few system calls) a listing can find both the
merged file and its parts, i.e. the same rows twice, with the same ``request_id``,
``key``, ``key_type`` and ``ts``: harmless to the evaluation, which deduplicates
predictions by (request_id, key, key_type). A reader that lists files and then opens them
can also find a part gone in between, and reads again. No row is ever missing: a part is
removed only once the merged file holding it has been renamed in. A worker merges only the
files it wrote (its writer id is their prefix); those of a worker that was killed stay as
they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from keyed_serving.capture import layout
from keyed_serving.capture.files import Captured, CapturedModel, captured_table, write_atomic
from keyed_serving.lazy import numpy as np

logger = logging.getLogger("keyed_serving.capture")
BUFFER_FULL = "buffer_full"
MAX_BYTES = "max_bytes"
WRITE_FAILED = "write_failed"
DROP_REASONS = (BUFFER_FULL, MAX_BYTES, WRITE_FAILED)
LOG_EVERY_S = 60.0
# How often the thread turns the buffer's references into Arrow tables.
CONVERT_EVERY_S = 0.5
RESCAN_EVERY_S = 60.0
_HASH_SCALE = float(2**64)


def keeps(key: Any, sample: float) -> bool:
    """Whether a key is captured at this sample rate: a stable hash of its text and type,
    the same in every process and run."""
    if sample >= 1:
        return True
    text, kind = layout.key_text(key)
    digest = hashlib.blake2b(f"{kind}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SCALE < sample


def sampled(batch: Captured, sample: float) -> Captured | None:
    """The part of a batch whose keys the sample keeps (None: none of them)."""
    if sample >= 1:
        return batch
    keys = list(batch.keys)  # once: a column of keys (KeyColumn) is read whole here
    keep = [index for index, key in enumerate(keys) if keeps(key, sample)]
    refused = [entry for entry in batch.refused if keeps(entry[0], sample)]
    if not keep and not refused:
        return None
    if len(keep) == len(batch.keys):
        return replace(batch, refused=refused)
    rows = np.array(keep, dtype=np.intp)
    new_row = {old: new for new, old in enumerate(keep)}
    predictions = list(batch.predictions)
    return replace(
        batch,
        keys=[keys[index] for index in keep],
        columns=[_rows_of(column, rows) for column in batch.columns],
        predictions=[predictions[index] for index in keep],
        probabilities=None
        if batch.probabilities is None
        else np.asarray(batch.probabilities)[rows],
        errors={new_row[row]: error for row, error in batch.errors.items() if row in new_row},
        refused=refused,
    )


def _rows_of(column: Any, rows: np.ndarray) -> np.ndarray:
    values = column if isinstance(column, np.ndarray) else np.asarray(column, dtype=object)
    return values[rows]


def writer_id() -> str:
    """This process as a writer: host, pid and start time (a restarted pid differs)."""
    host = layout.partition_value(socket.gethostname())
    return f"{host}-{os.getpid()}-{int(time.time() * 1000)}"


class CaptureWriter:
    """One worker's capture of ``model``'s answers under ``root`` (see the module)."""

    def __init__(
        self,
        root: Path,
        model: CapturedModel,
        *,
        features: bool = True,
        flush_s: float = 5.0,
        buffer_rows: int = 500_000,
        max_bytes: int | None = None,
        sample: float = 1.0,
        on_dropped: Callable[[str, int], None] = lambda reason, rows: None,
        on_written: Callable[[int], None] = lambda rows: None,
        merge_after: int = 32,
        merge_bytes: int = 64 * 1024 * 1024,
        small_bytes: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.model = model
        self.features = features
        self.flush_s = flush_s
        self.buffer_rows = buffer_rows
        self.max_bytes = max_bytes
        self.sample = sample
        self.on_dropped = on_dropped
        self.on_written = on_written
        self.merge_after = merge_after
        self.merge_bytes = merge_bytes
        self.small_bytes = small_bytes
        self.clock = clock
        self.id = writer_id()
        self._lock = threading.Lock()  # the buffer, between the request path and the thread
        self._flushing = threading.Lock()  # one flush at a time (the thread's, or close's)
        self._pending: list[Captured] = []
        self._pending_rows = 0
        # Buffered rows made Arrow tables, by UTC day (POSIX days), not yet written.
        self._converted: dict[int, list[Any]] = {}
        self._converted_rows = 0
        self._written_at = time.monotonic()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._dropped: Counter[str] = Counter()  # not yet in a drops file
        self._unlogged: Counter[str] = Counter()  # not yet in a log line
        self._last_problem = ""
        self._last_log = float("-inf")
        self._used: int | None = None
        self._scanned_at = float("-inf")
        # Own files of each partition not yet merged (or merged and still small), in order.
        self._parts: dict[Path, list[Path]] = {}

    # The request path.
    def record(self, batch: Captured) -> None:
        """Keeps a reference to what a request answered, for the next flush; never blocks
        on a write, never raises (a full buffer drops the rows, counted)."""
        rows = batch.rows
        with self._lock:
            held = self._pending_rows + self._converted_rows
            full = self._closed or held + rows > self.buffer_rows
            if not full:
                self._pending.append(batch)
                self._pending_rows += rows
        if full:
            self._drop(WRITE_FAILED if self._closed else BUFFER_FULL, rows, "")

    @property
    def pending_rows(self) -> int:
        """Rows buffered, not yet written (as references, or already as Arrow tables)."""
        return self._pending_rows + self._converted_rows

    # The thread.
    def start(self) -> CaptureWriter:
        self._thread = threading.Thread(target=self._run, name="keyed-capture", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        tick_s = min(CONVERT_EVERY_S, self.flush_s)
        while not self._stop.wait(tick_s):
            self.flush(only_when_due=True)

    def close(self, timeout_s: float = 20.0) -> None:
        """Stops the thread and writes everything buffered, then merges this worker's
        files (the entry's shutdown, once its requests are answered). Idempotent."""
        with self._lock:
            already = self._closed
            self._closed = True
        if already:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush(merge_all=True)

    def flush(self, *, merge_all: bool = False, only_when_due: bool = False) -> None:
        """Writes what the buffer holds now; never raises. ``only_when_due`` (the thread's,
        every ``CONVERT_EVERY_S``): the buffer is made Arrow tables, and written only once
        ``flush_s`` has passed since the last write or half the buffer is taken."""
        with self._flushing:
            try:
                self._convert()
                due = (
                    not only_when_due
                    or time.monotonic() - self._written_at >= self.flush_s
                    or self._converted_rows * 2 >= self.buffer_rows
                )
                if due:
                    self._written_at = time.monotonic()
                    self._write_converted()
                    self._merge(merge_all)
                    self._write_drops()
            except Exception:  # a bug must not stop the thread: its rows are counted lost
                logger.exception("capture: a flush failed")
            self._report()

    def _convert(self) -> None:
        """The buffered references as Arrow tables by UTC date: compact, and no longer
        Python objects the collector walks (held for up to ``flush_s``)."""
        with self._lock:
            batches, self._pending = self._pending, []
            self._pending_rows = 0
        by_day: dict[int, list[Captured]] = {}  # UTC days since the epoch (POSIX days)
        for batch in batches:
            kept = sampled(batch, self.sample)
            if kept is not None:
                by_day.setdefault(int(kept.seconds // 86400), []).append(kept)
        for day, dated in sorted(by_day.items()):
            rows = sum(batch.rows for batch in dated)
            try:
                table = captured_table(self.model, dated, features=self.features)
            except Exception:
                logger.exception("capture: %d rows could not be made a table", rows)
                self._drop(WRITE_FAILED, rows, "rows that could not be made a table")
                continue
            with self._lock:
                self._converted.setdefault(day, []).append(table)
                self._converted_rows += table.num_rows

    def _write_converted(self) -> None:
        with self._lock:
            converted, self._converted = self._converted, {}
            self._converted_rows = 0
        for day, tables in sorted(converted.items()):
            self._write(layout.date_of(day * 86400), tables)

    def _write(self, date: str, tables: list[Any]) -> None:
        import pyarrow as pa

        rows = sum(table.num_rows for table in tables)
        directory = layout.predictions_dir(self.root, self.model.name, self.model.version, date)
        try:
            # snappy: the server writes often, and every row; merged files take zstd.
            path = write_atomic(
                pa.concat_tables(tables),
                directory,
                self._stem(),
                admit=self._admit,
                compression="snappy",
            )
        except OSError as exc:  # an unwritable directory, a full disk
            self._drop(WRITE_FAILED, rows, f"{directory}: {exc}")
            return
        except Exception as exc:  # a bug: the rows are lost, and counted
            logger.exception("capture: %d rows could not be written", rows)
            self._drop(WRITE_FAILED, rows, f"{directory}: {type(exc).__name__}: {exc}")
            return
        if path is None:
            self._drop(MAX_BYTES, rows, f"{self.root} holds {self.max_bytes} bytes or more")
            return
        parts = self._parts.setdefault(directory, [])
        if path.stat().st_size < self.small_bytes:  # larger files are left as they are
            parts.append(path)
        self.on_written(rows)

    def _stem(self) -> str:
        self._sequence += 1
        return f"{self.id}-{self._sequence:07d}"

    def _admit(self, size: int) -> bool:
        """Whether a file of ``size`` bytes fits in ``max_bytes`` (and counts it if so)."""
        if self.max_bytes is None:
            return True
        now = self.clock()
        if self._used is None or now - self._scanned_at >= RESCAN_EVERY_S:
            self._used = _bytes_under(self.root)
            self._scanned_at = now
        if self._used + size > self.max_bytes:
            return False
        self._used += size
        return True

    # Merging small files.
    def _merge(self, merge_all: bool) -> None:
        today = layout.date_of(self.clock())
        for directory, parts in list(self._parts.items()):
            over = not directory.name.endswith(f"={today}")
            if len(parts) > self.merge_after or ((merge_all or over) and len(parts) > 1):
                self._merge_parts(directory, parts)
            if over or merge_all:
                self._parts.pop(directory, None)

    def _merge_parts(self, directory: Path, parts: list[Path]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.concat_tables([pq.read_table(part, partitioning=None) for part in parts])
            merged = write_atomic(table, directory, f"{self.id}-merged-{self._sequence:07d}")
        except (OSError, pa.ArrowException) as exc:  # the parts stay, nothing is lost
            self._problem(f"could not merge {len(parts)} files in {directory}: {exc}")
            return
        assert merged is not None
        size = merged.stat().st_size
        for part in parts:
            if part != merged:
                if self._used is not None:
                    self._used -= part.stat().st_size
                part.unlink(missing_ok=True)
        if self._used is not None:
            self._used += size
        parts[:] = [merged] if size < self.merge_bytes else []

    # Drops.
    def _drop(self, reason: str, rows: int, problem: str) -> None:
        with self._lock:
            self._dropped[reason] += rows
            self._unlogged[reason] += rows
            if problem:
                self._last_problem = problem
        try:
            self.on_dropped(reason, rows)
        except Exception:
            logger.exception("capture: counting dropped rows failed")

    def _problem(self, problem: str) -> None:
        with self._lock:
            self._last_problem = problem

    def _write_drops(self) -> None:
        """The drops not yet written, to drops/ (kept for the next flush if it fails)."""
        import pyarrow as pa

        with self._lock:
            dropped, self._dropped = self._dropped, Counter()
        if not dropped:
            return
        now = self.clock()
        reasons = sorted(dropped)
        table = pa.table(
            {
                layout.TS: pa.array([int(now * 1e6)] * len(reasons), pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
                layout.WRITER: pa.array([self.id] * len(reasons), pa.string()),
                layout.DROPPED: pa.array([dropped[r] for r in reasons], pa.int64()),
                layout.DROP_REASON: pa.array(reasons, pa.string()),
            }
        )
        try:
            write_atomic(table, layout.drops_dir(self.root, layout.date_of(now)), self._stem())
        except OSError:
            with self._lock:
                self._dropped.update(dropped)

    def _report(self) -> None:
        """At most one log line a minute about what was dropped (or failed) since the last."""
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_S:
            return
        with self._lock:
            unlogged, self._unlogged = self._unlogged, Counter()
            problem, self._last_problem = self._last_problem, ""
        if not unlogged and not problem:
            return
        self._last_log = now
        counts = ", ".join(f"{rows} {reason}" for reason, rows in sorted(unlogged.items()))
        logger.warning(
            "capture dropped rows (%s)%s; answers are not affected",
            counts or "none",
            f": {problem}" if problem else "",
        )


def _bytes_under(root: Path) -> int:
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile (a merge)
                total += os.stat(os.path.join(directory, name)).st_size
    return total
