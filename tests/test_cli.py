"""keyed-score against real servers: two at once, one killed mid-run, resume, errors file,
and every file format."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import Server, own_predictions

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "keyed-score")
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture(scope="module")
def two_servers(default_model: str) -> Iterator[list[Server]]:
    servers = [Server(MODEL_TAG=default_model), Server(MODEL_TAG=default_model)]
    yield servers
    for server in servers:
        server.stop()


def flowers(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (n, 4)), 1), columns=FEATURES)
    frame.insert(0, "flower_id", [f"f{i:07d}" for i in range(n)])
    frame["batch"] = [f"b{i % 13}" for i in range(n)]
    return frame


def score(path: Path, out: Path, urls: list[str], *extra: str) -> subprocess.CompletedProcess:
    command = [CLI, str(path), "--key", "flower_id", "--out", str(out), "--keep", "batch"]
    for url in urls:
        command += ["--url", url]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=600)


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
            CLI,
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
        cli = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
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
