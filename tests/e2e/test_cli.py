"""keyed-score against real servers: two at once, one killed mid-run, resume, errors file,
and every file format."""

from __future__ import annotations

import decimal
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import ROOT, Server, own_predictions, write_table

pytestmark = pytest.mark.slow
# This tree's keyed-score (the venv's console script imports the main checkout's code).
CLI = [sys.executable, "-m", "keyed_serving.client.cli"]
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture(scope="module")
def one_server(default_model: str) -> Iterator[Server]:
    server = Server(MODEL_TAG=default_model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_servers(one_server: Server, default_model: str) -> Iterator[list[Server]]:
    other = Server(MODEL_TAG=default_model)
    yield [one_server, other]
    other.stop()


def flowers(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (n, 4)), 1), columns=FEATURES)
    frame.insert(0, "flower_id", [f"f{i:07d}" for i in range(n)])
    frame["batch"] = [f"b{i % 13}" for i in range(n)]
    return frame


def score(path: Path, out: Path, urls: list[str], *extra: str) -> subprocess.CompletedProcess:
    command = [*CLI, str(path), "--key", "flower_id", "--out", str(out), "--keep", "batch"]
    for url in urls:
        command += ["--url", url]
    return run([*command, *extra])


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_two_hundred_thousand_rows_across_two_servers(
    two_servers: list[Server], default_model: str, tmp_path: Path
) -> None:
    frame = flowers(200_000, seed=1)
    source, out = tmp_path / "flowers.csv", tmp_path / "scored.csv"
    frame.to_csv(source, index=False)
    done = score(source, out, [s.url for s in two_servers], "--concurrency", "8")
    assert done.returncode == 0, done.stderr
    scored = pd.read_csv(out, dtype={"flower_id": str})
    assert scored["flower_id"].tolist() == frame["flower_id"].tolist()
    assert scored["prediction"].tolist() == own_predictions(default_model, frame)
    assert scored["batch"].tolist() == frame["batch"].tolist()
    assert {"probability_setosa", "probability_versicolor", "probability_virginica"} <= set(
        scored.columns
    )
    print(done.stderr)  # rows/s, for the record


def test_losing_one_server_mid_run_still_answers_every_key_once(
    default_model: str, tmp_path: Path
) -> None:
    survivor, doomed = Server(MODEL_TAG=default_model), Server(MODEL_TAG=default_model)
    try:
        frame = flowers(120_000, seed=2)
        source, out = tmp_path / "flowers.parquet", tmp_path / "scored.jsonl"
        frame.to_parquet(source)
        command = [
            *CLI,
            str(source),
            "--key",
            "flower_id",
            "--out",
            str(out),
            "--url",
            survivor.url,
            "--url",
            doomed.url,
            "--batch-rows",
            "20000",
        ]
        cli = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 120
        while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
            time.sleep(0.05)  # the first batch is written: the run is under way
        assert cli.poll() is None, "the run ended before a server could be lost"
        doomed.kill()
        _, stderr = cli.communicate(timeout=600)
        assert cli.returncode == 0, stderr
        scored = pd.read_json(out, lines=True, dtype=False)
        assert scored["flower_id"].tolist() == frame["flower_id"].tolist()
        assert scored["prediction"].tolist() == own_predictions(default_model, frame)
    finally:
        survivor.stop()
        doomed.stop()


def instances_predicted(server: Server) -> float:
    import httpx

    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('keyed_instances_total{outcome="predicted"}'):
            return float(line.split()[-1])
    return 0.0


def test_resume_scores_only_the_keys_the_output_lacks(
    two_servers: list[Server], default_model: str, tmp_path: Path
) -> None:
    frame = flowers(5_000, seed=3)
    source, out = tmp_path / "flowers.csv", tmp_path / "scored.csv"
    frame.to_csv(source, index=False)
    assert score(source, out, [two_servers[0].url]).returncode == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:1801]))  # an interrupted run: header + 1,800 rows
    before = instances_predicted(two_servers[0])
    resumed = score(source, out, [two_servers[0].url], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "1,800 already in" in resumed.stderr
    assert instances_predicted(two_servers[0]) - before == 3_200
    scored = pd.read_csv(out, dtype={"flower_id": str})
    assert sorted(scored["flower_id"]) == sorted(frame["flower_id"])
    assert scored["flower_id"].is_unique


def test_failed_keys_go_to_an_errors_file_and_the_exit_status(
    two_servers: list[Server], tmp_path: Path
) -> None:
    records = flowers(300, seed=4).to_dict("records")
    for bad in (10, 250):
        records[bad]["petal_width_cm"] = "wide"  # not a number: that key's own error
    source, out = tmp_path / "flowers.jsonl", tmp_path / "scored.parquet"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = score(source, out, [s.url for s in two_servers])
    assert done.returncode == 1
    errors = [
        json.loads(line)
        for line in (tmp_path / "scored.parquet.errors.jsonl").read_text().splitlines()
    ]
    assert sorted(e["key"] for e in errors) == ["f0000010", "f0000250"]
    assert all("wrong_type" in e["error"] for e in errors)
    assert len(pd.read_parquet(out)) == 298


def test_duplicate_keys_are_reported_before_anything_is_sent(
    two_servers: list[Server], tmp_path: Path
) -> None:
    frame = flowers(100, seed=5)
    frame.loc[60, "flower_id"] = frame.loc[7, "flower_id"]
    source, out = tmp_path / "flowers.csv", tmp_path / "scored.csv"
    frame.to_csv(source, index=False)
    before = instances_predicted(two_servers[1])
    done = score(source, out, [two_servers[1].url])
    assert done.returncode == 2 and "f0000007" in done.stderr and "nothing was sent" in done.stderr
    assert instances_predicted(two_servers[1]) == before


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_each_format_round_trips(two_servers: list[Server], tmp_path: Path, suffix: str) -> None:
    frame = flowers(1_000, seed=6)
    source, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    {
        ".csv": lambda: frame.to_csv(source, index=False),
        ".parquet": lambda: frame.to_parquet(source),
        ".jsonl": lambda: frame.to_json(source, orient="records", lines=True),
    }[suffix]()
    assert score(source, out, [two_servers[0].url]).returncode == 0
    read = {
        ".csv": lambda: pd.read_csv(out, dtype={"flower_id": str}),
        ".parquet": lambda: pd.read_parquet(out),
        ".jsonl": lambda: pd.read_json(out, lines=True, dtype=False),
    }[suffix]()
    assert read["flower_id"].tolist() == frame["flower_id"].tolist()
    assert read["batch"].tolist() == frame["batch"].tolist()


def scored_keys(out: Path, column: str = "flower_id") -> list[str]:
    """The output's keys as text, whatever its format (a CSV's are text anyway)."""
    if out.suffix == ".csv":
        return pd.read_csv(out, dtype={column: str})[column].tolist()
    if out.suffix == ".parquet":
        return [str(k) for k in pd.read_parquet(out)[column]]
    return [str(json.loads(line)[column]) for line in out.read_text().splitlines()]


def test_a_parquet_table_of_decimals_is_scored_as_numbers(
    one_server: Server, default_model: str, tmp_path: Path
) -> None:
    frame = flowers(500, seed=7)
    ids = [2**60 + i for i in range(500)]
    table = pa.table(
        {
            "flower_id": pa.array([decimal.Decimal(i) for i in ids], pa.decimal128(20, 0)),
            **{
                name: pa.array([decimal.Decimal(str(v)) for v in frame[name]], pa.decimal128(6, 2))
                for name in FEATURES
            },
            "batch": frame["batch"].tolist(),
        }
    )
    source, out = tmp_path / "flowers.parquet", tmp_path / "scored.parquet"
    pq.write_table(table, source)
    done = score(source, out, [one_server.url], "--chunk-size", "100")  # hung before
    assert done.returncode == 0, done.stderr
    scored = pd.read_parquet(out)
    assert scored["flower_id"].tolist() == ids
    assert scored["prediction"].tolist() == own_predictions(default_model, frame)


def test_text_a_csv_reader_would_take_for_missing_is_a_key(
    one_server: Server, tmp_path: Path
) -> None:
    frame = flowers(20, seed=8)
    frame.loc[:5, "flower_id"] = ["NA", "None", "null", "nan", "N/A", "#N/A"]
    source, out = tmp_path / "flowers.csv", tmp_path / "scored.jsonl"
    write_table(frame, source)
    done = score(source, out, [one_server.url])
    assert done.returncode == 0, done.stderr
    assert scored_keys(out) == frame["flower_id"].tolist()


def interrupt(out: Path, rows: int) -> None:
    """What a run cut short leaves: ``rows`` whole rows, one with neither a prediction nor
    an error, and (in a text format) a last line half written."""
    scored = pd.read_parquet(out) if out.suffix == ".parquet" else None
    if scored is not None:
        cut = scored.iloc[: rows + 1].copy()
        cut.loc[cut.index[-1], "prediction"] = None
        cut.to_parquet(out)
        return
    lines = out.read_text().splitlines(keepends=True)
    header = lines[:1] if out.suffix == ".csv" else []
    body = lines[len(header) :]
    unanswered = body[rows].split(",")[0] + "\n" if out.suffix == ".csv" else None
    if unanswered is None:
        record = json.loads(body[rows])
        record["prediction"] = None
        unanswered = json.dumps({k: v for k, v in record.items() if "probability" not in k})
        unanswered += "\n"
    out.write_text("".join([*header, *body[:rows], unanswered, body[rows + 1][:12]]))


@pytest.mark.parametrize(
    ("source_suffix", "out_suffix"),
    [(".parquet", ".csv"), (".jsonl", ".csv"), (".csv", ".jsonl"), (".parquet", ".parquet")],
)
def test_resume_never_writes_a_key_twice_whatever_the_formats_and_key_types(
    one_server: Server, tmp_path: Path, source_suffix: str, out_suffix: str
) -> None:
    frame = flowers(178, seed=9)
    if source_suffix != ".csv":
        frame["flower_id"] = [10**12 + i for i in range(178)]  # integer keys
    source, out = tmp_path / f"flowers{source_suffix}", tmp_path / f"scored{out_suffix}"
    write_table(frame, source)
    assert score(source, out, [one_server.url]).returncode == 0
    interrupt(out, rows=60)
    resumed = score(source, out, [one_server.url], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "60 already in" in resumed.stderr
    keys = scored_keys(out)
    assert len(keys) == 178 and sorted(keys) == sorted(str(k) for k in frame["flower_id"])


def test_an_unexpected_error_ends_the_run_at_once_keeping_what_was_scored(
    one_server: Server, tmp_path: Path
) -> None:
    frame = flowers(500, seed=10)
    source, out = tmp_path / "flowers.parquet", tmp_path / "scored.csv"
    # A binary column the client cannot write as JSON, empty in the first 300 rows.
    binary = pa.array([None] * 300 + [b"\x00"] * 200, pa.binary())
    pq.write_table(pa.Table.from_pandas(frame).set_column(4, "petal_width_cm", binary), source)
    done = score(source, out, [one_server.url], "--chunk-size", "100", "--concurrency", "1")
    assert done.returncode == 3, done.stderr
    assert "TypeError" in done.stderr and "--resume" in done.stderr
    assert scored_keys(out) == frame["flower_id"].tolist()[:300]


def test_a_key_of_several_columns_and_row_keys(one_server: Server, tmp_path: Path) -> None:
    frame = flowers(300, seed=11)
    frame["shelf"] = [i // 13 for i in range(300)]  # with "batch": b{i % 13}, unique
    source, out = tmp_path / "flowers.csv", tmp_path / "scored.parquet"
    write_table(frame, source)
    command = [*CLI, str(source), "--url", one_server.url, "--out", str(out)]
    done = run([*command, "--key", "batch,shelf", "--batch-rows", "70"])
    assert done.returncode == 0, done.stderr
    scored = pd.read_parquet(out)
    # A CSV's key columns are read as the text written (as a single key column's are).
    expected = frame[["batch", "shelf"]].astype(str).values.tolist()
    assert scored[["batch", "shelf"]].values.tolist() == expected
    twice = frame.assign(shelf=0)
    write_table(twice, source)
    refused = run([*command, "--key", "batch,shelf"])
    assert refused.returncode == 2 and "duplicated" in refused.stderr
    write_table(frame.drop(columns=["flower_id"]), source)
    done = run([*command, "--key", "@row", "--batch-rows", "70"])
    assert done.returncode == 0, done.stderr
    assert pd.read_parquet(out)["row"].tolist() == list(range(300))
