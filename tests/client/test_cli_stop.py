"""keyed-score asked to stop where no request is in flight to give up: while it asks a
server for /model_info, and while it waits out a server's Retry-After (against a stand-in
server; tests/e2e/test_cli_stopped.py stops runs against a real one). And resumed after a
kill at the worst moment of writing Parquet."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pandas as pd
import pytest
from support import ROOT

from keyed_serving.client.cli import STOP_GRACE_S, completed_keys
from keyed_serving.tables import TableWriter, recover_interrupted

CLI = [sys.executable, "-m", "keyed_serving.client.cli"]


class StandIn(ThreadingHTTPServer):
    """Answers /model_info (after ``hold_model_info`` is cleared) and every /predict with
    503 Retry-After: 60; counts the requests it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.gets = self.posts = 0
        self.answer_model_info = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.gets += 1
        self.server.answer_model_info.wait(30)
        body = orjson.dumps({"features": [{"name": "x", "type": "number"}], "classes": None})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.server.posts += 1
        self.send_response(503)
        self.send_header("retry-after", "60")
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.answer_model_info.set()
    server.shutdown()
    server.server_close()


def start(stand_in: StandIn, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    source, out = tmp_path / "table.csv", tmp_path / "scored.parquet"
    pd.DataFrame({"id": [f"k{i}" for i in range(100)], "x": range(100)}).to_csv(source, index=False)
    command = [*CLI, str(source), "--key", "id", "--url", stand_in.url, "--out", str(out)]
    cli = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    return cli, out


def wait_for(condition: Callable[[], object], cli: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert cli.poll() is None, cli.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def posts_after(stand_in: StandIn, posts: int) -> Callable[[], bool]:
    return lambda: stand_in.posts > posts


def test_a_stop_before_anything_is_sent_ends_the_run_at_once(
    stand_in: StandIn, tmp_path: Path
) -> None:
    cli, out = start(stand_in, tmp_path)
    wait_for(lambda: stand_in.gets, cli)  # asking for /model_info, not answered
    cli.send_signal(signal.SIGTERM)
    _, stderr = cli.communicate(timeout=10)
    assert cli.returncode == 143
    assert stderr.strip() == "keyed-score: stopped by SIGTERM before anything was sent"
    assert stand_in.posts == 0 and not out.exists()


def test_a_run_waiting_out_a_retry_after_stops_after_a_grace_or_a_second_signal(
    stand_in: StandIn, tmp_path: Path
) -> None:
    stand_in.answer_model_info.set()
    # Two of one signal sent at once are taken as one (Python's handlers): a Ctrl-C then a
    # SIGTERM are two, taken in that order.
    second = [signal.SIGINT, signal.SIGTERM]
    for signals, within_s in (([signal.SIGTERM], STOP_GRACE_S + 3), (second, 3)):
        told_to_wait = posts_after(stand_in, stand_in.posts)  # come back in 60 s
        cli, out = start(stand_in, tmp_path)
        wait_for(told_to_wait, cli)
        for signum in signals:
            cli.send_signal(signum)
        stopped = time.monotonic()
        stderr = cli.communicate(timeout=30)[1]
        assert time.monotonic() - stopped < within_s
        assert cli.returncode == 128 + signals[0], stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "0 of 100 keys" in lines[0] and "--resume" in lines[0], stderr
        assert pd.read_parquet(out).empty


def test_resuming_a_run_killed_while_merging_its_parts_keeps_each_key_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "scored.parquet"
    writer = TableWriter(out)
    for key in ("a", "b"):
        writer.write(pd.DataFrame({"id": [key], "prediction": [f"p-{key}"]}))
    # Killed between renaming the merged file into place and removing the parts.
    kept_part = out.with_name("scored.parquet.parts") / "part-000001.parquet"
    survivor = kept_part.read_bytes()
    writer.close()
    kept_part.parent.mkdir()
    kept_part.write_bytes(survivor)
    recover_interrupted(out)
    assert completed_keys(out, ["id"]) == {("a",), ("b",)}
    assert pd.read_parquet(out)["id"].tolist() == ["a", "b"]
