from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bentoml
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from support import ROOT, make_customer_table

from keyed_serving.model.predicting import LoadedModel
from keyed_serving.model.spec import to_frame
from keyed_serving.model.store import MODEL_FILE
from keyed_serving.model.training import infer_task, train_and_save


def load(tag: str) -> LoadedModel:
    stored = bentoml.models.get(tag)
    return LoadedModel.load(str(stored.tag), stored.info.metadata, stored.path_of(MODEL_FILE))


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["yes", "no", None], "classification"),
        ([True, False, True], "classification"),
        ([0, 1, 2, 1, 0], "classification"),
        ([0.5, 1.25, 3.0], "regression"),
        (list(range(100)), "regression"),
    ],
)
def test_the_task_is_inferred_from_the_target(values: list, task: str) -> None:
    assert infer_task(pd.Series(values)) == task


def test_the_default_model_is_iris_with_species_names(default_model: str) -> None:
    model = load(default_model)
    assert model.spec.task == "classification"
    assert model.spec.classes == ("setosa", "versicolor", "virginica")
    assert model.spec.feature_names == [
        "sepal_length_cm",
        "sepal_width_cm",
        "petal_length_cm",
        "petal_width_cm",
    ]
    assert model.spec.holdout_score.metric == "accuracy"
    assert model.spec.holdout_score.value > 0.8


def test_a_csv_with_categories_and_gaps_trains_without_its_key(customer_model: str) -> None:
    model = load(customer_model)
    metadata = bentoml.models.get(customer_model).info.metadata
    assert metadata["key_column"] == "customer_id"
    assert "customer_id" not in model.spec.feature_names
    assert {f.name: f.type for f in model.spec.features} == {
        "plan": "category",
        "region": "category",
        "tenure_months": "number",
        "monthly_spend": "number",
        "support_tickets": "number",
    }
    assert model.spec.classes == ("no", "yes")
    assert model.spec.holdout_score.value > 0.6
    saved = joblib.load(bentoml.models.get(customer_model).path_of(MODEL_FILE))
    assert isinstance(saved, Pipeline)


def test_serving_rows_predict_like_the_pipeline_on_the_training_frame(customer_model: str) -> None:
    model = load(customer_model)
    table = make_customer_table(300, seed=99)  # rows it never saw, gaps included
    columns = {f.name: table[f.name].tolist() for f in model.spec.features}
    expected = model.pipeline.predict(to_frame(columns, model.spec.features))
    clean = {n: [None if pd.isna(v) else v for v in values] for n, values in columns.items()}
    predicted = model.predict_columns(clean)
    assert predicted.errors == {}
    assert predicted.predictions.tolist() == expected.tolist()
    assert predicted.probabilities is not None
    assert np.allclose(predicted.probabilities.sum(axis=1), 1)


def test_unseen_categories_and_missing_values_are_predicted(customer_model: str) -> None:
    model = load(customer_model)
    values = ["platinum", None, None, None, 2.0]
    assert model.spec.feature_names == [
        "plan",
        "region",
        "tenure_months",
        "monthly_spend",
        "support_tickets",
    ]
    predicted = model.predict_columns(
        {name: [value] for name, value in zip(model.spec.feature_names, values, strict=True)}
    )
    assert predicted.predictions.tolist()[0] in ("no", "yes")


def test_a_regression_target_trains_a_regressor(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    table = pd.DataFrame(
        {
            "id": range(200),
            "x": x,
            "colour": rng.choice(["r", "g"], 200),
            "y": 3 * x + rng.normal(0, 0.1, 200),
        }
    )
    trained = train_and_save(table, target="y", key="id", name="linear")
    assert trained.task == "regression" and trained.metric == "r2" and trained.score > 0.8
    model = load(trained.tag)
    names = model.spec.feature_names
    predicted = model.predict_columns(dict(zip(names, [[1.0], ["g"]], strict=True)))
    assert isinstance(predicted.predictions.tolist()[0], float)
    assert predicted.probabilities is None


def test_train_cli_refuses_a_target_that_is_not_in_the_table(customer_csv: Path) -> None:
    out = subprocess.run(
        [sys.executable, "train.py", "--csv", str(customer_csv), "--target", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "'nope'" in out.stderr


def test_train_cli_if_missing_does_not_train_twice(default_model: str) -> None:
    out = subprocess.run(
        [sys.executable, "train.py", "--if-missing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "not training" in out.stdout
    assert str(bentoml.models.get("iris_classifier:latest").tag) == default_model
