"""Models of other shapes and names at import (issue 20, items 5, 7, 8, 9): multi-output
models are refused saying so, a model served by ``predict`` alone keeps its labels' type,
a feature named ``key`` gets a V2 key input of another name, and a pickle that needs a
module no server has is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import accuracy_score
from sklearn.multioutput import MultiOutputClassifier, MultiOutputRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from support import ROOT

import keyed_serving
from keyed_serving.model.importing import ImportRefused, import_model
from keyed_serving.model.store import load_spec
from keyed_serving.serving import v2


def numbers_table(rows: int = 120, seed: int = 3) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    x1, x2 = generator.normal(size=rows), generator.normal(size=rows)
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "y1": 2 * x1 - x2 + generator.normal(scale=0.1, size=rows),
            "y2": x1 * x2,
            "label": np.where(x1 + x2 > 0, "east", "west"),
            "other": np.where(x1 > 0, "up", "down"),
        }
    )


def stored_tags(name: str) -> list[str]:
    try:
        return [str(m.tag) for m in bentoml.models.list(name)]
    except bentoml.exceptions.NotFound:
        return []


MULTI_OUTPUT_REGRESSORS = {
    "MultiOutputRegressor": lambda: MultiOutputRegressor(Ridge()),
    "forest on two targets": lambda: RandomForestRegressor(n_estimators=5, random_state=0),
    "linear in a pipeline": lambda: make_pipeline(StandardScaler(), LinearRegression()),
}


@pytest.mark.parametrize("make", MULTI_OUTPUT_REGRESSORS.values(), ids=MULTI_OUTPUT_REGRESSORS)
@pytest.mark.parametrize("with_target", [False, True], ids=["sample", "target"])
def test_a_multi_output_regressor_is_refused_saying_multi_output(
    make: Any, with_target: bool
) -> None:
    table = numbers_table()
    model = make().fit(table[["x1", "x2"]], table[["y1", "y2"]])
    sample = table[["x1", "x2", "y1"]] if with_target else table[["x1", "x2"]]
    target = "y1" if with_target else None
    with pytest.raises(ImportRefused, match=r"multi-output.*2 values per row.*one model per"):
        keyed_serving.save_model("two_outputs", model, sample, target=target)
    assert stored_tags("two_outputs") == []


MULTI_OUTPUT_CLASSIFIERS = {
    "MultiOutputClassifier": lambda: MultiOutputClassifier(LogisticRegression()),
    "forest on two targets": lambda: RandomForestClassifier(n_estimators=5, random_state=0),
}


@pytest.mark.parametrize("make", MULTI_OUTPUT_CLASSIFIERS.values(), ids=MULTI_OUTPUT_CLASSIFIERS)
def test_a_multi_output_classifier_is_refused_saying_multi_output(make: Any) -> None:
    table = numbers_table()
    model = make().fit(table[["x1", "x2"]], table[["label", "other"]])
    for task in (None, "regression"):
        with pytest.raises(ImportRefused, match=r"multi-output.*2 values per row"):
            keyed_serving.save_model("two_labels", model, table[["x1", "x2"]], task=task)  # type: ignore[arg-type]
    assert stored_tags("two_labels") == []


def test_a_model_fitted_on_a_one_column_target_is_refused_with_the_fix() -> None:
    table = numbers_table()
    model = LinearRegression().fit(table[["x1", "x2"]], table[["y1"]])
    with pytest.raises(ImportRefused, match=r"\[N, 1\].*1-D target"):
        keyed_serving.save_model("column_target", model, table[["x1", "x2"]])


LABELS = {
    "text": (lambda t: t["label"], "text", "BYTES"),
    "integers": (lambda t: (t["label"] == "east").astype(np.int64) + 3, "integer", "INT64"),
    "booleans": (lambda t: t["label"] == "east", "boolean", "BOOL"),
}


@pytest.mark.parametrize("labels", LABELS.values(), ids=LABELS)
def test_a_classifier_served_by_predict_alone_keeps_its_labels_type_and_scores_accuracy(
    labels: Any,
) -> None:
    make_labels, kind, datatype = labels
    table = numbers_table()
    table["y"] = make_labels(table)
    model = SVC().fit(table[["x1", "x2"]], table["y"])  # no predict_proba
    sample = table[["x1", "x2", "y"]]
    imported = import_model("labels_alone", model, sample, target="y", task="regression")
    assert imported.score is not None
    assert imported.score.metric == "accuracy_on_import_sample"
    own = model.predict(sample[["x1", "x2"]])
    assert imported.score.value == pytest.approx(accuracy_score(sample["y"], own))
    spec = load_spec(imported.tag)
    assert spec.prediction_type == kind
    outputs = {o["name"]: o for o in v2.model_metadata(spec)["outputs"]}
    assert outputs["prediction"]["datatype"] == datatype


def test_a_regressor_still_predicts_numbers_scored_by_r2() -> None:
    table = numbers_table()
    model = Ridge().fit(table[["x1", "x2"]], table["y1"])
    imported = import_model("plain_regressor", model, table[["x1", "x2", "y1"]], target="y1")
    assert imported.score is not None and imported.score.metric == "r2_on_import_sample"
    spec = load_spec(imported.tag)
    assert spec.prediction_type == "number"
    outputs = {o["name"]: o for o in v2.model_metadata(spec)["outputs"]}
    assert outputs["prediction"]["datatype"] == "FP64"


def test_a_feature_named_key_gets_a_v2_key_input_of_another_name() -> None:
    table = numbers_table().rename(columns={"x1": "key"})
    model = Ridge().fit(table[["key", "x2"]], table["y1"])
    tag = keyed_serving.save_model("feature_named_key", model, table[["key", "x2"]])
    spec = load_spec(tag)
    metadata = v2.model_metadata(spec)
    names = [i["name"] for i in metadata["inputs"]]
    assert len(names) == len(set(names)) == 3
    key_input = metadata["properties"]["key_input"]
    assert key_input not in spec.feature_names and key_input in names
    body = {
        "inputs": [
            {"name": key_input, "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            {"name": "key", "datatype": "FP64", "shape": [2], "data": [0.5, 1.5]},
            {"name": "x2", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]},
        ]
    }
    import orjson

    request = v2.decode_infer_request(orjson.dumps(body), None, spec, 100)
    assert request.body["keys"] == ["a", "b"]
    columns = {name: list(values) for name, values in request.body["columns"].items()}
    assert columns == {"key": [0.5, 1.5], "x2": [1.0, 2.0]}


MY_FEATURES = """
import numpy as np


def add_ratio(frame):
    frame = frame.copy()
    frame["ratio"] = frame["x1"] / (np.abs(frame["x2"]) + 1)
    return frame
"""


def test_a_model_needing_a_local_module_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myfeatures.py").write_text(MY_FEATURES)
    monkeypatch.syspath_prepend(str(tmp_path))
    import myfeatures  # type: ignore[import-not-found]
    from sklearn.preprocessing import FunctionTransformer

    table = numbers_table()
    model = make_pipeline(FunctionTransformer(myfeatures.add_ratio), Ridge())
    model.fit(table[["x1", "x2"]], table["y1"])
    with pytest.raises(ImportRefused, match=r"myfeatures.*not part of an installed package"):
        keyed_serving.save_model("local_module", model, table[["x1", "x2"]])
    assert stored_tags("local_module") == []
    sys.modules.pop("myfeatures", None)


def test_keyed_import_refuses_a_pickle_needing_a_module_of_the_current_directory(
    tmp_path: Path,
) -> None:
    """As a user runs it: the module sits in the current directory, so it imports there."""
    (tmp_path / "myfeatures.py").write_text(MY_FEATURES)
    table = numbers_table()
    table[["x1", "x2"]].to_csv(tmp_path / "sample.csv", index=False)
    fit = (
        "import joblib, pandas as pd, myfeatures\n"
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import FunctionTransformer\n"
        "from sklearn.linear_model import Ridge\n"
        "t = pd.read_csv('sample.csv')\n"
        "m = make_pipeline(FunctionTransformer(myfeatures.add_ratio), Ridge())\n"
        "joblib.dump(m.fit(t, t['x1'] * 2), 'model.joblib')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", fit], cwd=tmp_path, env=env, check=True)
    command = ["model.joblib", "--sample", "sample.csv", "--name", "local_module_cli"]
    done = subprocess.run(
        [sys.executable, "-m", "keyed_serving.model.importing", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "myfeatures" in done.stderr and "not part of an installed package" in done.stderr


@pytest.mark.parametrize("labels", LABELS.values(), ids=LABELS)
def test_spark_types_the_predictions_of_a_model_served_by_predict_alone_as_its_labels(
    labels: Any,
) -> None:
    types = pytest.importorskip("pyspark.sql.types")
    from keyed_serving.offline.spark import output_schema

    make_labels, kind, _ = labels
    table = numbers_table()
    table["y"] = make_labels(table)
    model = SVC().fit(table[["x1", "x2"]], table["y"])
    tag = keyed_serving.save_model("labels_spark", model, table[["x1", "x2"]], task="regression")
    schema = output_schema(load_spec(tag), [types.StructField("id", types.StringType())], [])
    expected = {"text": types.StringType, "integer": types.LongType, "boolean": types.BooleanType}
    assert isinstance(schema["prediction"].dataType, expected[kind])
