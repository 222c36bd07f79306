"""Helpers shared by the tests and the bench scripts: data, models, real servers.

No side effects on import (conftest.py sets the test session's environment; bench
scripts set their own).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def byte_edits(offsets: Any, values: Sequence[bytes]) -> Any:
    """A hypothesis strategy of one to three fuzzer's edits for ``edited``: (an offset drawn
    from ``offsets``, "put" | "insert" | "drop", one of ``values``)."""
    from hypothesis import strategies as st

    edit = st.tuples(offsets, st.sampled_from(["put", "insert", "drop"]), st.sampled_from(values))
    return st.lists(edit, min_size=1, max_size=3)


def edited(text: bytes, edits: Sequence[tuple[int, str, bytes]], around: int = 0) -> bytes:
    """``text`` as a fuzzer leaves it: each (offset, "put" | "insert" | "drop", byte) puts,
    inserts or drops a byte at ``around + offset``, kept within the text."""
    changed = bytearray(text)
    for offset, edit, byte in edits:
        at = min(max(around + offset, 0), len(changed))
        if edit == "insert":
            changed[at:at] = byte
        elif at < len(changed):
            changed[at : at + 1] = byte if edit == "put" else b""
    return bytes(changed)


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


def train_with_cli(
    table: Path, target: str, name: str, *extra: str, home: str | None = None
) -> str:
    """A model trained through train.py's command line, as a user would (keyed by
    customer_id, into ``home``'s store or the session's); its tag."""
    out = subprocess.run(
        [
            *(sys.executable, "train.py", "--table", str(table), "--target", target),
            *("--key", "customer_id", "--name", name, *extra),
        ],
        cwd=ROOT,
        env={**os.environ, **({"BENTOML_HOME": home} if home else {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    tag = out.stdout.split()[1]
    assert tag.startswith(f"{name}:"), out.stdout
    return tag


def instance_features(table: pd.DataFrame, i: int, names: Sequence[str]) -> dict[str, Any]:
    """Row ``i``'s ``names`` as a wire instance's features: plain Python values, None for
    a gap."""
    row = table.iloc[i]
    return {
        name: None if pd.isna(row[name]) else getattr(row[name], "item", lambda v=row[name]: v)()
        for name in names
    }


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """The frame as a table file of the format its suffix names, the way a user's pandas
    writes one (the readers under test must take it as it is)."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    return path


@functools.lru_cache(maxsize=8)
def _stored_pipeline(tag: str) -> tuple[Any, Any]:
    import bentoml
    import joblib

    from keyed_serving.model.spec import ModelSpec
    from keyed_serving.model.store import MODEL_FILE

    stored = bentoml.models.get(tag)
    spec = ModelSpec.from_metadata(str(stored.tag), stored.info.metadata)
    return spec, joblib.load(stored.path_of(MODEL_FILE))


def own_predictions(tag: str, rows: pd.DataFrame | list[dict[str, Any]]) -> list[Any]:
    """What the model itself predicts for these rows, without any server: a frame with the
    feature columns, or wire instances ``[{"key", "features"}]``."""
    from keyed_serving.model.spec import to_frame

    spec, pipeline = _stored_pipeline(tag)
    if isinstance(rows, pd.DataFrame):
        columns = {f.name: rows[f.name].tolist() for f in spec.features}
    else:
        columns = {f.name: [i["features"][f.name] for i in rows] for f in spec.features}
    return list(pipeline.predict(to_frame(columns, spec.features)).tolist())


def save_strict_copy(tag: str, name: str) -> str:
    """A copy of a trained model that raises on a category it has not seen, as many real
    pipelines do (ours ignore them): a value that passes validation and still makes the
    model raise on a micro-batch, to exercise the runner's poison isolation. Its tag."""
    import bentoml
    import joblib

    from keyed_serving.model.store import MODEL_FILE

    stored = bentoml.models.get(tag)
    pipeline = joblib.load(stored.path_of(MODEL_FILE))
    encoder = pipeline.named_steps["preprocess"].named_transformers_["categories"]
    encoder.named_steps["encode"].handle_unknown = "error"
    with bentoml.models.create(name, metadata=stored.info.metadata) as ref:
        joblib.dump(pipeline, ref.path_of(MODEL_FILE))
    return str(ref.tag)


def build_bento(model_tag: str, folder: Path) -> str:
    """The bento `make build MODEL_TAG=...` builds (its two steps: the bentofile with the
    model's package pins into ``folder``, then `bentoml build`): its tag."""
    env = {**os.environ, "MODEL_TAG": model_tag}
    bentofile = folder / "bentofile.build.yaml"
    subprocess.run(
        [sys.executable, "-m", "keyed_serving.model.bento", "bentofile.yaml", str(bentofile)],
        cwd=ROOT, env=env, check=True, timeout=120,
    )  # fmt: skip
    out = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "build", "-f", str(bentofile), ".",
         "--output", "tag"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


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


class Server:
    """A real `bentoml serve` on a free loopback port, in a session of its own.

    It gets a BentoML home of its own holding a copy of the current home's models and
    bentos: two servers sharing a home share one Prometheus directory, and each start
    wipes it, so neither's /metrics could be trusted."""

    def __init__(
        self, target: str = "service:KeyedPrediction", cwd: Path = ROOT, **env: str
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="keyed-server-home-"))
        source = Path(os.environ["BENTOML_HOME"])
        for store in ("models", "bentos"):
            if (source / store).exists():
                shutil.copytree(source / store, self.home / store, symlinks=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "bentoml"),
                "serve",
                target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=cwd,
            env={**os.environ, "BENTOML_HOME": str(self.home), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(self.url, self.process)
        except BaseException:
            self.print_log()
            self.stop()
            raise

    def worker(self, service: str) -> psutil.Process:
        """The worker process of the entry ("KeyedPrediction") or the runner ("ModelRunner")."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:  # a worker just killed, not yet reaped
                continue
            if "_bentoml_impl.worker" in cmdline and (
                (service == "ModelRunner") == ("--service-name ModelRunner" in cmdline)
            ):
                return child
        raise LookupError(service)

    def kill(self) -> None:
        """Gone at once, workers and all, as a machine that dies."""
        family = [
            psutil.Process(self.process.pid),
            *psutil.Process(self.process.pid).children(recursive=True),
        ]
        for process in family:
            process.kill()
        psutil.wait_procs(family, timeout=10)
        self.process.wait(timeout=10)
        # The drain lock a graceful runner would have removed (keyed_serving.serving.lifecycle).
        from keyed_serving.serving.lifecycle import lock_path

        base = Path(os.environ.get("XDG_RUNTIME_DIR") or self.home)
        lock_path(self.process.pid, base).unlink(missing_ok=True)

    def print_log(self) -> None:
        self.log.seek(0)
        sys.stderr.write(self.log.read().decode(errors="replace")[-6000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_server(self.process)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def served(target: str = "service:KeyedPrediction", cwd: Path = ROOT, **env: str) -> Iterator[str]:
    """A real server for the body's duration; its log is printed if the body fails."""
    server = Server(target, cwd, **env)
    try:
        yield server.url
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()


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
