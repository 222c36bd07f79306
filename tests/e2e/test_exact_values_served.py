"""The user's values, exactly, through a real `bentoml serve` (issue 20 items 2, 3, 6): a
model of zip codes as text and a model of a datetime column, each scored from CSV, Parquet,
JSON Lines (keyed-score, and /predict_file) and from a DataFrame (KeyedClient); every
answer is the model's own on the original frame."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from exact_values import import_visit_model, import_zip_model, visit_table, zip_table
from support import ROOT, served, write_table

from keyed_serving.client.keyed_client import KeyedClient

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "keyed_serving.client.cli"]
FORMATS = (".csv", ".parquet", ".jsonl")


def read(source: Path | bytes, suffix: str) -> pd.DataFrame:
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    if suffix == ".csv":
        return pd.read_csv(handle, dtype=str, keep_default_na=False)
    if suffix == ".parquet":
        return pd.read_parquet(handle)
    return pd.read_json(handle, lines=True, dtype=False, precise_float=True)


def the_models_own(pipeline: Any, frame: pd.DataFrame, suffix: str) -> Callable[..., None]:
    features = list(pipeline.feature_names_in_)
    predictions = pipeline.predict(frame[features]).tolist()
    probabilities = pipeline.predict_proba(frame[features])
    rtol = 1e-12  # every format holds a float exactly

    def check(scored: pd.DataFrame, route: str) -> None:
        assert scored["prediction"].tolist() == predictions, route
        for i, label in enumerate(pipeline.classes_):
            got = scored[f"probability_{label}"].astype(float).to_numpy()
            np.testing.assert_allclose(got, probabilities[:, i], rtol=rtol, err_msg=route)

    return check


def score_everywhere(url: str, pipeline: Any, frame: pd.DataFrame, folder: Path) -> None:
    check = the_models_own(pipeline, frame, ".parquet")
    check(KeyedClient(url).score(frame, "id"), "KeyedClient.score(DataFrame)")
    for suffix in FORMATS:
        check = the_models_own(pipeline, frame, suffix)
        source = write_table(frame, folder / f"in{suffix}")
        out = folder / f"out{suffix}"
        done = subprocess.run(
            [*CLI, str(source), "--key", "id", "--out", str(out), "--url", url],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        check(read(out, suffix), f"keyed-score {suffix}")
        with httpx.Client(base_url=url, timeout=120) as http:
            response = http.post(
                "/predict_file",
                files={"file": (source.name, source.read_bytes())},
                data={"key": "id"},
            )
        assert response.status_code == 200, response.text
        check(read(response.content, suffix), f"/predict_file {suffix}")


def test_zip_codes_as_text_are_scored_as_the_model_scores_them_on_every_route(
    tmp_path: Path,
) -> None:
    tag, pipeline = import_zip_model(tmp_path)
    frame = zip_table(500, seed=31)
    with served(MODEL_TAG=tag) as url:
        score_everywhere(url, pipeline, frame, tmp_path)
        source = write_table(frame.assign(prediction="old"), tmp_path / "old.csv")
        command = [*CLI, str(source), "--key", "id", "--out", str(tmp_path / "o.csv")]
        refused = subprocess.run(
            [*command, "--url", url, "--keep", "prediction"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert refused.returncode == 2 and "'prediction'" in refused.stderr
        assert not (tmp_path / "o.csv").exists()


def test_a_datetime_feature_is_scored_as_the_model_scores_it_on_every_route(
    tmp_path: Path,
) -> None:
    tag, pipeline = import_visit_model(tmp_path)
    frame = visit_table(400, seed=32)
    with served(MODEL_TAG=tag) as url:
        score_everywhere(url, pipeline, frame, tmp_path)
