"""The model store's load where a server starts: in a child, without pyarrow when the model
loads that way (the runner then never maps pyarrow's ~60 MB), with it when it needs it;
the same predictions either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from support import ROOT, make_customer_table

from keyed_serving.model import store

PREDICT_IN_A_CHILD = """
import json, sys
import bentoml
from keyed_serving.model.spec import to_frame
from keyed_serving.model.store import load_stored
model = load_stored(bentoml.models.get(sys.argv[1]))
columns = json.loads(sys.stdin.read())
predictions, probabilities = model.predict_frame(to_frame(columns, model.spec.features))
print(json.dumps({
    "pyarrow": sys.modules.get("pyarrow") is not None,
    "predictions": predictions.tolist(),
    "probabilities": None if probabilities is None else probabilities.tobytes().hex(),
}))
"""


def predicted_in_a_child(tag: str, columns: dict[str, list[Any]], hide: str) -> dict[str, Any]:
    """A fresh process as a runner worker is (pandas not yet imported), told by the server's
    start whether to hide pyarrow."""
    out = subprocess.run(
        [sys.executable, "-c", PREDICT_IN_A_CHILD, tag],
        input=json.dumps(columns),
        env={**os.environ, "PYTHONPATH": str(ROOT), store.PYARROW_VARIABLE: hide},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return dict(json.loads(out.stdout.splitlines()[-1]))


@pytest.fixture(scope="module")
def native_categorical_model() -> str:
    """LightGBM on pandas categoricals: the runner builds its frame with pd.Categorical."""
    lightgbm = pytest.importorskip("lightgbm")
    import numpy as np
    import pandas as pd

    import keyed_serving

    rng = np.random.default_rng(5)
    colours = rng.choice(["red", "green", "blue"], 600)
    table = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 30.0, 600),
            "colour": pd.Categorical(colours, categories=["red", "green", "blue"]),
            "zone": pd.Categorical(rng.choice([10, 20, 30, 40], 600)),
        }
    )
    table.loc[::23, "colour"] = np.nan
    table["label"] = (table["spend"] / 60 + (table["colour"] == "green") * 1.5 > 1).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1)
    model.fit(table[["spend", "colour", "zone"]], table["label"])
    return str(keyed_serving.save_model("native_lgbm_store", model, table, target="label"))


@pytest.mark.parametrize("model", ["default_model", "customer_model", "native_categorical_model"])
def test_without_pyarrow_the_runner_predicts_the_same_bits(
    model: str, request: pytest.FixtureRequest
) -> None:
    tag = request.getfixturevalue(model)
    table = make_customer_table(300, seed=11)
    if model == "default_model":
        columns = {
            "sepal_length_cm": [4.3 + i % 36 / 10 for i in range(300)],
            "sepal_width_cm": [2.0 + i % 24 / 10 for i in range(300)],
            "petal_length_cm": [1.0 + i % 59 / 10 for i in range(300)],
            "petal_width_cm": [0.1 + i % 24 / 10 for i in range(300)],
        }
    elif model == "native_categorical_model":  # text on the wire, a gap and unseen values
        columns = {
            "spend": table["monthly_spend"].fillna(0).tolist(),
            "colour": [["red", "green", "blue", None, "purple"][i % 5] for i in range(300)],
            "zone": [["10", "20", "30", "40", "50"][i % 5] for i in range(300)],
        }
    else:  # categories with gaps, numbers with gaps
        columns = {
            name: [None if value != value else value for value in table[name].tolist()]
            for name in ("plan", "region", "tenure_months", "monthly_spend", "support_tickets")
        }
    hidden = predicted_in_a_child(tag, columns, hide="1")
    plain = predicted_in_a_child(tag, columns, hide="0")
    assert (hidden["pyarrow"], plain["pyarrow"]) == (False, True)
    assert hidden["predictions"] == plain["predictions"]
    assert hidden["probabilities"] == plain["probabilities"]


def test_the_start_hands_its_workers_a_model_that_loads_without_pyarrow(
    default_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bentoml

    monkeypatch.setenv(store.PYARROW_VARIABLE, "stale, from another start")
    store.load_apart(bentoml.models.get(default_model))
    assert os.environ[store.PYARROW_VARIABLE] == "1"


def test_a_model_that_holds_pyarrow_data_is_loaded_with_pyarrow(
    default_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bentoml
    import joblib
    import pandas as pd

    stored = bentoml.models.get(default_model)
    pipeline = joblib.load(stored.path_of(store.MODEL_FILE))
    # as a ColumnTransformer given `frame.columns` keeps them: a pyarrow-backed pandas Index
    pipeline.columns_seen_ = pd.Index(["a", "b"], dtype="string[pyarrow]")
    with bentoml.models.create("iris_holding_arrow", metadata=stored.info.metadata) as ref:
        joblib.dump(pipeline, ref.path_of(store.MODEL_FILE))
    monkeypatch.delenv(store.PYARROW_VARIABLE, raising=False)
    store.load_apart(bentoml.models.get(str(ref.tag)))  # not refused
    assert os.environ[store.PYARROW_VARIABLE] == "0"
