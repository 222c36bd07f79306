"""A server that cannot serve its model stops at once, non-zero, with one line saying why,
instead of respawning its workers for ever (a container platform can then restart it or
report it)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bentoml
import joblib
import pytest
from support import ROOT, free_port, stop_server

# Long enough for a slow machine to import BentoML and scikit-learn twice; a server that
# respawns its workers instead never gets there.
EXIT_WITHIN_S = 60.0


def start_and_wait_for_exit(
    target: str = "service:KeyedPrediction", cwd: Path = ROOT, **env: str
) -> tuple[int | None, str, float]:
    """`bentoml serve` started and waited for: (its exit code, or None if it still ran
    after EXIT_WITHIN_S, then stopped with its workers; its output; seconds it ran)."""
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "bentoml"), "serve", target,
             "--host", "127.0.0.1", "--port", str(free_port())],
            cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            code: int | None = process.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            code = None
            stop_server(process)
        elapsed = time.monotonic() - started
        log.seek(0)
        return code, log.read().decode(errors="replace"), elapsed


def assert_stopped_with_one_clear_line(
    code: int | None, output: str, elapsed: float, *said: str
) -> None:
    assert code is not None, f"still running after {elapsed:.0f} s:\n{output[-3000:]}"
    assert code != 0, output
    lines = [line for line in output.splitlines() if all(part in line for part in said)]
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_a_server_whose_model_is_not_in_the_store_stops_at_once_saying_so() -> None:
    code, output, elapsed = start_and_wait_for_exit(MODEL_TAG="nowhere_to_be_found:latest")
    assert_stopped_with_one_clear_line(
        code, output, elapsed, "nowhere_to_be_found:latest", "not in the model store"
    )


@pytest.fixture
def model_needing_a_local_module(default_model: str, tmp_path: Path) -> str:
    """The default model behind a FunctionTransformer whose function lives in a module of
    the user's own that the server cannot import: it unpickles only where that module is."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from keyed_serving.model.store import MODEL_FILE

    (tmp_path / "users_own_features.py").write_text("def unchanged(frame):\n    return frame\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import users_own_features  # type: ignore[import-not-found]

        stored = bentoml.models.get(default_model)
        pipeline = make_pipeline(
            FunctionTransformer(users_own_features.unchanged),
            joblib.load(stored.path_of(MODEL_FILE)),
        )
        with bentoml.models.create("needs_local_module", metadata=stored.info.metadata) as ref:
            joblib.dump(pipeline, ref.path_of(MODEL_FILE))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("users_own_features", None)
    return str(ref.tag)


@pytest.mark.slow
def test_a_server_whose_model_cannot_be_unpickled_stops_at_once_saying_why(
    model_needing_a_local_module: str,
) -> None:
    code, output, elapsed = start_and_wait_for_exit(MODEL_TAG=model_needing_a_local_module)
    assert_stopped_with_one_clear_line(
        code, output, elapsed, model_needing_a_local_module, "users_own_features"
    )
