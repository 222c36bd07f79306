"""The runner's forest path (model._forest_proba) answers what scikit-learn's own
predict_proba and predict answer, bit for bit. It calls scikit-learn's trees directly, so
these tests are what fails if a scikit-learn release changes how a forest averages them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from support import make_customer_table

from keyed_serving.model.predicting import THREADED_ROWS, LoadedModel, _forest_proba
from keyed_serving.model.spec import ModelSpec, to_frame
from keyed_serving.model.training import build_pipeline, describe_features

FEATURES = ["plan", "region", "tenure_months", "monthly_spend", "support_tickets"]


def fitted(estimator: str, labels: str) -> tuple[LoadedModel, pd.DataFrame]:
    table = make_customer_table(800, seed=3)
    features = describe_features(table[FEATURES])
    frame = to_frame({f.name: table[f.name].tolist() for f in features}, features)
    target = table["churned"] if labels == "strings" else (table["tenure_months"] // 40)
    pipeline = build_pipeline(features, "classification")
    if estimator == "extra_trees":
        pipeline.steps[-1] = ("model", ExtraTreesClassifier(n_estimators=30, random_state=0))
    pipeline.fit(frame, target.fillna(0))
    spec = ModelSpec(
        tag="m:1",
        task="classification",
        target="t",
        features=tuple(features),
        classes=tuple(pipeline.classes_.tolist()),
        holdout_score=None,  # type: ignore[arg-type]
    )
    return LoadedModel(spec, pipeline), frame


@pytest.mark.parametrize("estimator", ["random_forest", "extra_trees"])
@pytest.mark.parametrize("labels", ["strings", "integers"])
def test_the_forest_path_answers_what_scikit_learn_answers_bit_for_bit(
    estimator: str, labels: str
) -> None:
    model, frame = fitted(estimator, labels)
    assert model.predict_proba is not None  # the forest path is the one taken
    rng = np.random.default_rng(1)
    for size in (1, 7, 300):
        rows = frame.sample(size, random_state=int(rng.integers(1000)), replace=True)
        rows = rows.reset_index(drop=True)
        rows.loc[rows.index[::3], "monthly_spend"] = np.nan
        rows.loc[rows.index[1::4], "region"] = "a region never seen"
        predictions, probabilities = model.predict_frame(rows)
        assert np.array_equal(probabilities, model.pipeline.predict_proba(rows))
        assert predictions.tolist() == model.pipeline.predict(rows).tolist()


@pytest.mark.parametrize("threads", [2, 3])
def test_rows_split_between_threads_answer_the_same_bit_for_bit(threads: int) -> None:
    model, frame = fitted("random_forest", "strings")
    rows = frame.sample(THREADED_ROWS + 123, random_state=4, replace=True)
    rows = rows.reset_index(drop=True)
    rows.loc[rows.index[::5], "tenure_months"] = np.nan
    path = _forest_proba(model.pipeline, threads)
    assert np.array_equal(path(rows), model.pipeline.predict_proba(rows))


def test_a_bare_forest_and_a_one_step_pipeline_take_the_path_too() -> None:
    rng = np.random.default_rng(2)
    x = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    y = (x["a"] > 0).astype(int)
    for pipeline in (
        RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y),
        make_pipeline(RandomForestClassifier(n_estimators=20, random_state=0)).fit(x, y),
        make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=20)).fit(x, y),
    ):
        path = _forest_proba(pipeline)
        assert path is not None
        assert np.array_equal(path(x), pipeline.predict_proba(x))
