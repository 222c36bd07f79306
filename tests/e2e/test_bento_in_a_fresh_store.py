"""A bento carries its model: built as `make build MODEL_TAG=...` builds it, exported,
imported into an empty BentoML home (what a container or another machine has) and served
with no MODEL_TAG, it answers with that model, exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from support import ROOT, Server, build_bento
from test_unservable_model import assert_stopped_with_one_clear_line, start_and_wait_for_exit

BENTOML = str(Path(sys.executable).parent / "bentoml")
FEATURES = ["tenure months", "spend", "tickets"]  # a space in a name, as users write them


def run(*args: str, env: dict[str, str], cwd: Path = ROOT) -> str:
    out = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


def sample(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure months": rng.integers(1, 120, rows).astype(float),
            "spend": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "tickets": rng.poisson(1.5, rows).astype(float),
        }
    )
    frame.loc[rng.random(rows) < 0.1, "spend"] = np.nan
    return frame


@pytest.fixture(scope="module")
def lightgbm_model() -> tuple[str, Any]:
    """A LightGBM classifier with text labels, stored by keyed_serving.save_model: its tag
    (the exact version) and the fitted model."""
    lightgbm = pytest.importorskip("lightgbm")
    import keyed_serving

    frame = sample(400, seed=3)
    labels = np.where(frame["tickets"] - frame["tenure months"] / 40 > 0.2, "leaves", "stays")
    model = lightgbm.LGBMClassifier(n_estimators=20, min_child_samples=5, verbose=-1)
    model.fit(frame, labels)
    return keyed_serving.save_model("fresh_store_lgbm", model, frame), model


@pytest.fixture(scope="module")
def exported_bento(
    lightgbm_model: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """`make build MODEL_TAG=fresh_store_lgbm:latest` (the Makefile's two steps), then
    `bentoml export`: the bento's tag and its file."""
    tag, _ = lightgbm_model
    work = tmp_path_factory.mktemp("bento")
    bento_tag = build_bento(tag.split(":")[0] + ":latest", work)
    exported = work / "keyed-prediction.bento"
    run(BENTOML, "export", bento_tag, str(exported), env=dict(os.environ))
    yield bento_tag, exported


@pytest.fixture(scope="module")
def fresh_home(
    exported_bento: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """An empty BentoML home into which only the exported bento was imported."""
    _, exported = exported_bento
    home = tmp_path_factory.mktemp("fresh-bentoml-home")
    run(BENTOML, "import", str(exported), env={**os.environ, "BENTOML_HOME": str(home)})
    # `bentoml import` puts the bento's models into the store too: that one and no other.
    assert sorted(p.name for p in (home / "models").iterdir()) == ["fresh_store_lgbm"]
    yield home


@pytest.mark.slow
def test_an_exported_bento_serves_its_own_model_from_a_fresh_store_without_model_tag(
    lightgbm_model: tuple[str, Any],
    exported_bento: tuple[str, Path],
    fresh_home: Path,
    tmp_path: Path,
) -> None:
    tag, model = lightgbm_model
    bento_tag, _ = exported_bento
    assert "MODEL_TAG" not in os.environ and "KEYED_MODEL_TAG" not in os.environ
    rows = sample(300, seed=11)
    keys = [f"row-{i}" for i in range(len(rows))][::-1]  # keys that are not positions
    columns = {name: [None if pd.isna(v) else v for v in rows[name]] for name in FEATURES}
    server = Server(bento_tag, cwd=tmp_path, BENTOML_HOME=str(fresh_home))
    try:
        info = httpx.get(f"{server.url}/model_info", timeout=30)
        response = httpx.post(
            f"{server.url}/predict", json={"keys": keys, "columns": columns}, timeout=60
        )
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()
    assert info.status_code == 200, info.text
    assert info.json()["model"] == tag
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == tag
    assert answer["keys"] == keys
    by_key = dict(zip(answer["keys"], answer["predictions"], strict=True))
    own = model.predict(rows)
    assert [by_key[key] for key in keys] == own.tolist()
    own_probabilities = model.predict_proba(rows)
    for column, label in enumerate(model.classes_):
        served = dict(zip(answer["keys"], answer["probabilities"][label], strict=True))
        np.testing.assert_allclose(
            [served[key] for key in keys], own_probabilities[:, column], rtol=1e-12, atol=0
        )


@pytest.mark.slow
def test_a_bento_asked_for_a_model_it_does_not_carry_stops_at_once_saying_so(
    lightgbm_model: tuple[str, Any],
    exported_bento: tuple[str, Path],
    fresh_home: Path,
    tmp_path: Path,
) -> None:
    tag, _ = lightgbm_model
    bento_tag, _ = exported_bento
    code, output, elapsed = start_and_wait_for_exit(
        bento_tag, cwd=tmp_path, BENTOML_HOME=str(fresh_home), MODEL_TAG="iris_classifier:latest"
    )
    assert_stopped_with_one_clear_line(
        code, output, elapsed, "MODEL_TAG=iris_classifier:latest", f"carries {tag}"
    )
