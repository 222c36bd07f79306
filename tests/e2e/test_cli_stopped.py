"""keyed-score stopped part way, in every output format: killed (SIGKILL), or asked to stop
(SIGTERM, Ctrl-C), then resumed. Every key ends up in the output exactly once, with the
model's own prediction, and no key that was kept is scored again."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from support import ROOT, Server, own_predictions

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "keyed_serving.client.cli"]
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
ROWS = 800
# Small requests, few in flight: the run takes long enough to be stopped part way.
PACE = ["--chunk-size", "40", "--concurrency", "2"]
FORMATS = [".csv", ".jsonl", ".parquet"]


@pytest.fixture(scope="module")
def slow_server(default_model: str) -> Iterator[Server]:
    # A runner call per four rows and no coalescing: a few hundred rows/s on two cores, so
    # a run of 800 rows lasts seconds rather than milliseconds.
    server = Server(MODEL_TAG=default_model, KEYED_CHUNK_ROWS="4", KEYED_BATCHING="false")
    yield server
    server.stop()


@pytest.fixture
def flowers(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    rng = np.random.default_rng(20)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (ROWS, 4)), 1), columns=FEATURES)
    frame.insert(0, "flower_id", [f"f{i:07d}" for i in range(ROWS)])
    frame["batch"] = [f"b{i % 13}" for i in range(ROWS)]
    source = tmp_path / "flowers.csv"
    frame.to_csv(source, index=False)
    return frame, source


def command(source: Path, out: Path, server: Server, batch_rows: int, *extra: str) -> list[str]:
    return [
        *CLI,
        str(source),
        "--key",
        "flower_id",
        "--keep",
        "batch",
        "--url",
        server.url,
        "--out",
        str(out),
        "--batch-rows",
        str(batch_rows),
        *PACE,
        *extra,
    ]


def start(arguments: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def predicted(server: Server) -> int:
    """Rows the server has predicted since it started (its /metrics)."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('keyed_instances_total{outcome="predicted"}'):
            return int(float(line.split()[-1]))
    return 0


def requests_in_progress(server: Server) -> int:
    """/predict requests the server's entry is still answering (a stopped client's last ones
    are answered all the same)."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if (
            line.startswith("bentoml_service_request_in_progress{")
            and 'endpoint="/predict"' in line
            and 'service_name="KeyedPrediction"' in line
        ):
            return int(float(line.split()[-1]))
    return 0


def wait_until_idle(server: Server) -> None:
    deadline = time.monotonic() + 60
    while requests_in_progress(server):
        assert time.monotonic() < deadline, "the server is still answering a stopped run"
        time.sleep(0.05)


def wait_until_predicted(server: Server, rows: int, cli: subprocess.Popen[str]) -> None:
    """Polls the server until it has predicted ``rows``, while the run goes on."""
    deadline = time.monotonic() + 60
    while predicted(server) < rows:
        assert cli.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def read_output(out: Path) -> pd.DataFrame:
    if out.suffix == ".csv":
        return pd.read_csv(out, dtype={"flower_id": str})
    if out.suffix == ".jsonl":
        return pd.read_json(out, lines=True, dtype=False)
    return pd.read_parquet(out)


def check_scored(out: Path, frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """The output's rows: each key once, each with the model's own prediction for its row,
    and its kept column as it was."""
    scored = read_output(out)
    assert scored["flower_id"].is_unique
    rows = frame.set_index("flower_id").loc[scored["flower_id"]].reset_index()
    assert scored["prediction"].tolist() == own_predictions(model, rows)
    assert scored["batch"].tolist() == rows["batch"].tolist()
    return scored


def already_in(stderr: str) -> int:
    found = re.search(r"([\d,]+) already in", stderr)
    return int(found.group(1).replace(",", "")) if found else 0


def resume_to_the_end(
    arguments: list[str], server: Server, out: Path, frame: pd.DataFrame, model: str
) -> int:
    """Resumes the run; checks that it scores exactly the keys the output lacked, and that
    the output then holds every key once. How many keys the output held before."""
    wait_until_idle(server)
    before = predicted(server)
    resumed = subprocess.run(
        [*arguments, "--resume"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr
    kept = already_in(resumed.stderr)
    assert predicted(server) - before == ROWS - kept  # nothing kept was scored again
    scored = check_scored(out, frame, model)
    assert sorted(scored["flower_id"]) == frame["flower_id"].tolist()
    return kept


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_killed_run_resumes_without_losing_repeating_or_rescoring_a_key(
    slow_server: Server,
    default_model: str,
    flowers: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    suffix: str,
) -> None:
    frame, source = flowers
    out = tmp_path / f"scored{suffix}"
    arguments = command(source, out, slow_server, 200)
    # Killed twice: the first run, then the run resuming it, each after its first batch.
    for again in ([], ["--resume"]):
        before = predicted(slow_server)
        cli = start([*arguments, *again])
        wait_until_predicted(slow_server, before + 250, cli)  # its first batch is written
        cli.kill()
        cli.communicate(timeout=30)
        assert cli.returncode == -signal.SIGKILL
    kept = resume_to_the_end(arguments, slow_server, out, frame, default_model)
    assert kept >= 400  # each killed run's first batch of 200 at least


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_run_asked_to_stop_keeps_its_finished_chunks_and_says_how_to_resume(
    slow_server: Server,
    default_model: str,
    flowers: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    signum: signal.Signals,
    suffix: str,
) -> None:
    frame, source = flowers
    out = tmp_path / f"scored{suffix}"
    arguments = command(source, out, slow_server, ROWS)  # one batch: chunks, never a batch
    before = predicted(slow_server)
    cli = start(arguments)
    wait_until_predicted(slow_server, before + 200, cli)
    cli.send_signal(signum)
    _, stderr = cli.communicate(timeout=30)
    assert cli.returncode == 128 + signum, stderr  # 130 for Ctrl-C, 143 for SIGTERM
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # one line, no traceback
    scored = check_scored(out, frame, default_model)
    assert 0 < len(scored) < ROWS
    assert f"{len(scored):,} of {ROWS:,} keys" in lines[0] and "--resume" in lines[0]
    assert resume_to_the_end(arguments, slow_server, out, frame, default_model) == len(scored)
