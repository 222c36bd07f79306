"""The per-worker capture writer: the buffer, flushes, drops by reason, sampling, merging."""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from keyed_serving.capture import layout
from keyed_serving.capture.files import Captured, CapturedModel
from keyed_serving.capture.writer import CaptureWriter, keeps, sampled
from keyed_serving.schemas import FeatureInfo

MODEL = CapturedModel(
    "flowers", "v1", "classification", ("a", "b"), (FeatureInfo(name="x", type="number"),)
)
NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC).timestamp()


def answered(keys: list, rid: str = "r", ts: float = NOW) -> Captured:
    n = len(keys)
    return Captured(
        request_id=rid,
        source="predict",
        ts=ts,
        keys=keys,
        columns=[np.arange(n, dtype=np.float64)],
        predictions=["a"] * n,
        probabilities=np.tile([0.9, 0.1], (n, 1)),
    )


def writer(root: Path, **given) -> tuple[CaptureWriter, Counter[str]]:
    dropped: Counter[str] = Counter()

    def count(reason: str, rows: int) -> None:
        dropped[reason] += rows

    options = {"clock": lambda: NOW, "on_dropped": count, **given}
    return CaptureWriter(root, MODEL, **options), dropped


def rows_in(root: Path) -> list[tuple[str, str]]:
    directory = root / layout.PREDICTIONS
    if not list(directory.rglob("*.parquet")):
        return []
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    return sorted(zip(table["request_id"].to_pylist(), table["key"].to_pylist(), strict=True))


def drops_in(root: Path) -> Counter[str]:
    table = ds.dataset(root / layout.DROPS, format="parquet", partitioning="hive").to_table()
    counted: Counter[str] = Counter()
    for reason, rows in zip(table["reason"].to_pylist(), table["dropped"].to_pylist(), strict=True):
        counted[reason] += rows
    return counted


def files_in(root: Path) -> list[Path]:
    return sorted((root / layout.PREDICTIONS).rglob("*.parquet"))


def test_recording_writes_nothing_until_a_flush(tmp_path: Path) -> None:
    capture, _ = writer(tmp_path)
    capture.record(answered([1, 2], "r-1"))
    assert rows_in(tmp_path) == [] and capture.pending_rows == 2
    capture.flush()
    assert rows_in(tmp_path) == [("r-1", "1"), ("r-1", "2")]
    assert capture.pending_rows == 0


def test_close_writes_everything_buffered_and_later_records_are_counted(tmp_path: Path) -> None:
    capture, dropped = writer(tmp_path, flush_s=3600)
    capture.start()
    capture.record(answered(list(range(5)), "r-1"))
    capture.close()
    assert len(rows_in(tmp_path)) == 5
    capture.record(answered([9]))
    assert dropped == {"write_failed": 1}


def test_the_thread_flushes_every_interval(tmp_path: Path) -> None:
    capture, _ = writer(tmp_path, flush_s=0.05)
    capture.start()
    try:
        capture.record(answered([1]))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
        while not rows_in(tmp_path) and datetime.datetime.now() < deadline:
            capture._stop.wait(0.02)  # polling the directory the thread writes to
        assert rows_in(tmp_path) == [("r", "1")]
    finally:
        capture.close()


def test_a_full_buffer_drops_rows_counted_and_written_to_drops(tmp_path: Path) -> None:
    capture, dropped = writer(tmp_path, buffer_rows=3)
    capture.record(answered([1, 2], "kept"))
    capture.record(answered([3, 4], "dropped"))  # 4 > 3 rows
    capture.record(answered([5], "kept-too"))
    assert dropped == {"buffer_full": 2}
    capture.flush()
    assert [rid for rid, _ in rows_in(tmp_path)] == ["kept", "kept", "kept-too"]
    assert drops_in(tmp_path) == {"buffer_full": 2}


def test_an_unwritable_directory_drops_rows_and_logs_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    capture, dropped = writer(blocker / "capture")
    with caplog.at_level(logging.WARNING, "keyed_serving.capture"):
        for _ in range(3):
            capture.record(answered([1, 2]))
            capture.flush()
    assert dropped == {"write_failed": 6}
    assert len([r for r in caplog.records if "capture dropped" in r.getMessage()]) == 1


def test_drops_not_yet_written_are_written_once_the_directory_can_be(tmp_path: Path) -> None:
    root = tmp_path / "capture"
    root.write_text("in the way")
    capture, _ = writer(root)
    capture.record(answered([1, 2, 3]))
    capture.flush()
    root.unlink()
    capture.flush()
    assert drops_in(root) == {"write_failed": 3}


def test_max_bytes_drops_rows_once_spent(tmp_path: Path) -> None:
    capture, dropped = writer(tmp_path, max_bytes=1)
    capture.record(answered([1, 2]))
    capture.flush()
    assert rows_in(tmp_path) == [] and dropped == {"max_bytes": 2}
    roomy, dropped = writer(tmp_path / "roomy", max_bytes=10**9)
    roomy.record(answered([1, 2]))
    roomy.flush()
    assert len(rows_in(tmp_path / "roomy")) == 2 and not dropped


def test_a_table_that_cannot_be_made_drops_its_rows(tmp_path: Path) -> None:
    capture, dropped = writer(tmp_path)
    broken = Captured("r", "predict", NOW, [1, 2], [np.zeros(1)], ["a", "a"])  # 1 value, 2 keys
    capture.record(broken)
    capture.record(answered([3], "fine"))
    capture.flush()
    assert dropped == {"write_failed": 3}  # the flush's rows go as one table


def test_sampling_keeps_the_same_keys_everywhere() -> None:
    keys = [*range(2000), *(f"k{i}" for i in range(2000))]
    kept = [key for key in keys if keeps(key, 0.25)]
    assert 0.2 < len(kept) / len(keys) < 0.3
    assert kept == [key for key in keys if keeps(key, 0.25)]  # stable
    # 1 and "1" are different keys, hashed apart; a smaller sample keeps a subset.
    assert {key for key in keys if keeps(key, 0.1)} <= set(kept)
    assert all(keeps(key, 1.0) for key in keys) and not any(keeps(key, 0.0) for key in keys)
    # Known values: the hash is BLAKE2b of "<type>\\0<text>", not Python's hash().
    assert [keeps(key, 0.5) for key in (1, "1", "a")] == [
        key_hash_below(kind, text, 0.5) for kind, text in (("int", "1"), ("str", "1"), ("str", "a"))
    ]


def key_hash_below(kind: str, text: str, sample: float) -> bool:
    import hashlib

    digest = hashlib.blake2b(f"{kind}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < sample * 2**64


def test_a_sampled_batch_keeps_its_rows_whole(tmp_path: Path) -> None:
    keys = list(range(200))
    batch = Captured(
        "r",
        "predict",
        NOW,
        keys,
        [np.arange(200, dtype=np.float64)],
        ["a" if k % 2 else "b" for k in keys],
        np.array([[k / 200, 1 - k / 200] for k in keys]),
        errors={7: ("model_error", "x"), 8: ("model_error", "y")},
        refused=[(500, "missing_feature", "m"), ("s", "missing_feature", "m")],
    )
    part = sampled(batch, 0.5)
    assert part is not None
    expected = [k for k in keys if keeps(k, 0.5)]
    assert part.keys == expected
    assert part.columns[0].tolist() == [float(k) for k in expected]
    assert part.predictions == ["a" if k % 2 else "b" for k in expected]
    assert part.probabilities[:, 0].tolist() == [k / 200 for k in expected]
    assert {part.keys[row] for row in part.errors} == {k for k in (7, 8) if keeps(k, 0.5)}
    assert [k for k, _, _ in part.refused] == [k for k in (500, "s") if keeps(k, 0.5)]
    capture, _ = writer(tmp_path, sample=0.5)
    capture.record(batch)
    capture.flush()
    assert len(rows_in(tmp_path)) == len(expected) + len(part.refused)


def test_merging_keeps_every_row_exactly_once(tmp_path: Path) -> None:
    capture, _ = writer(tmp_path, merge_after=4)
    sent = []
    for flush in range(11):
        keys = [f"{flush}-{i}" for i in range(3)]
        capture.record(answered(keys, f"r-{flush}"))
        sent += [(f"r-{flush}", key) for key in keys]
        capture.flush()
        assert rows_in(tmp_path) == sorted(sent)  # at every moment in between, too
        assert len(files_in(tmp_path)) <= 5
    capture.close()
    assert rows_in(tmp_path) == sorted(sent)
    assert len(files_in(tmp_path)) == 1 and "merged" in files_in(tmp_path)[0].name


def test_a_day_that_is_over_is_merged(tmp_path: Path) -> None:
    now = [NOW]
    capture, _ = writer(tmp_path, clock=lambda: now[0])
    for i in range(3):
        capture.record(answered([i], ts=NOW))
        capture.flush()
    assert len(files_in(tmp_path)) == 3
    now[0] = NOW + 86400
    capture.record(answered([9], ts=now[0]))
    capture.flush()
    by_date = Counter(path.parent.name for path in files_in(tmp_path))
    assert by_date == {"date=2026-12-06": 1, "date=2026-12-07": 1}
    assert len(rows_in(tmp_path)) == 4


def test_merging_only_takes_this_writers_own_files(tmp_path: Path) -> None:
    first, _ = writer(tmp_path)
    first.record(answered([1], "first"))
    first.flush()
    second, _ = writer(tmp_path)
    second.id = first.id + "-other"
    for i in range(3):
        second.record(answered([i], "second"))
        second.flush()
    second.close()
    names = [path.name for path in files_in(tmp_path)]
    assert len(names) == 2 and sum(name.startswith(second.id) for name in names) == 1
    assert len(rows_in(tmp_path)) == 4


def test_half_a_buffer_is_written_without_waiting_for_the_interval(tmp_path: Path) -> None:
    capture, dropped = writer(tmp_path, flush_s=3600, buffer_rows=10)
    capture.start()
    try:
        capture.record(answered(list(range(6)), "big"))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
        while not rows_in(tmp_path) and datetime.datetime.now() < deadline:
            capture._stop.wait(0.02)  # polling the directory the thread writes to
        assert len(rows_in(tmp_path)) == 6 and not dropped
    finally:
        capture.close()


def test_rows_made_tables_still_count_against_the_buffer(tmp_path: Path) -> None:
    capture, dropped = writer(tmp_path, flush_s=3600, buffer_rows=8)
    capture.record(answered([1, 2, 3]))
    capture.flush(only_when_due=True)  # made a table, not written: 3 of 8 rows still held
    assert rows_in(tmp_path) == [] and capture.pending_rows == 3
    capture.record(answered([4, 5, 6, 7, 8, 9]))
    assert dropped == {"buffer_full": 6}
    capture.flush()
    assert len(rows_in(tmp_path)) == 3 and capture.pending_rows == 0


def test_files_written_large_are_not_merged(tmp_path: Path) -> None:
    capture, _ = writer(tmp_path, merge_after=2, small_bytes=1)
    for i in range(5):
        capture.record(answered([i]))
        capture.flush()
    capture.close()
    assert len(files_in(tmp_path)) == 5 and len(rows_in(tmp_path)) == 5


def test_rows_a_write_fails_on_for_any_reason_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyed_serving.capture import writer as module

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(module, "write_atomic", broken)
    capture, dropped = writer(tmp_path)
    capture.record(answered([1, 2]))
    capture.flush()  # does not raise
    assert dropped == {"write_failed": 2}
