from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from keyed_serving.tables import TableWriter, iter_batches, read_keys


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
