"""Helpers shared by the tests and the bench scripts: data, models, real servers.

No side effects on import (conftest.py sets the test session's environment; bench
scripts set their own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def make_customer_table(rows: int, seed: int = 7) -> pd.DataFrame:
    """A churn-like table the models have never seen: numbers, categories, gaps, a key."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows)
    tenure = rng.integers(1, 120, rows).astype(float)
    spend = np.round(rng.gamma(2.0, 30.0, rows), 2)
    tickets = rng.poisson(1.5, rows).astype(float)
    score = (
        (plan == "basic") * 1.2
        + tickets * 0.5
        - tenure / 40
        + (region == "south") * 0.6
        + rng.normal(0, 0.8, rows)
    )
    table = pd.DataFrame(
        {
            "customer_id": [f"cust-{i:06d}" for i in range(rows)],
            "plan": plan,
            "region": region,
            "tenure_months": tenure,
            "monthly_spend": spend,
            "support_tickets": tickets,
            "churned": np.where(score > 0.5, "yes", "no"),
        }
    )
    # Missing values in numbers and in categories.
    for column, share in (("monthly_spend", 0.08), ("region", 0.1), ("tenure_months", 0.05)):
        table.loc[rng.random(rows) < share, column] = np.nan
    return table


def save_strict_copy(tag: str, name: str) -> str:
    """A copy of a trained model that raises on a category it has not seen, as many real
    pipelines do (ours ignore them): a value that passes validation and still makes the
    model raise on a micro-batch, to exercise the runner's poison isolation. Its tag."""
    import bentoml
    import joblib

    from keyed_serving.model import MODEL_FILE

    stored = bentoml.models.get(tag)
    pipeline = joblib.load(stored.path_of(MODEL_FILE))
    encoder = pipeline.named_steps["preprocess"].named_transformers_["categories"]
    encoder.named_steps["encode"].handle_unknown = "error"
    with bentoml.models.create(name, metadata=stored.info.metadata) as ref:
        joblib.dump(pipeline, ref.path_of(MODEL_FILE))
    return str(ref.tag)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling a port that is not open yet; nothing to wait on instead
    raise TimeoutError(f"server at {url} not ready after {timeout_s} s")


@contextlib.contextmanager
def served(target: str = "service:KeyedPrediction", cwd: Path = ROOT, **env: str) -> Iterator[str]:
    """A real `bentoml serve` on a free loopback port; stopped, workers and all, on exit.

    Its log is printed when the body fails, so a failing test shows what the server saw."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bentoml_cli = str(Path(sys.executable).parent / "bentoml")
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [bentoml_cli, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(url, process)
            yield url
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-6000:])
            raise
        finally:
            stop_server(process)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    # Workers run in sessions of their own: collect them before the parent goes away.
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=10)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)
