"""Serving the model you already have: keyed-import (a joblib / pickle file or an MLflow
directory, with a sample), a plain bentoml.sklearn model by tag, and what is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import bentoml
import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder
from support import ROOT, make_customer_table, served

import keyed_serving
from keyed_serving.model.importing import ImportRefused, import_model
from keyed_serving.model.predicting import _predicts_by_largest_probability
from keyed_serving.model.spec import ModelRefused, to_frame
from keyed_serving.model.store import check_servable, load_stored

CATEGORIES = ["plan", "region"]
NUMBERS = ["tenure_months", "monthly_spend", "support_tickets"]


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    return make_customer_table(600, seed=11)


@pytest.fixture(scope="module")
def sample_csv(customers: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("import") / "sample.csv"
    customers.to_csv(path, index=False)
    return path


def native_category_pipeline(customers: pd.DataFrame) -> Pipeline:
    """Categories encoded by the pipeline itself for HistGradientBoosting's native
    categories; NaN left to the model; string labels."""
    encode = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan
    )
    return Pipeline(
        [
            ("encode", ColumnTransformer([("c", encode, CATEGORIES)], remainder="passthrough")),
            ("model", HistGradientBoostingClassifier(categorical_features=[0, 1], max_iter=30)),
        ]
    ).fit(customers[CATEGORIES + NUMBERS], customers["churned"])


def import_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """keyed-import as a user runs it (``python -m`` so that this worktree's code runs)."""
    return subprocess.run(
        [sys.executable, "-m", "keyed_serving.model.importing", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def imported_pipeline(
    customers: pd.DataFrame, sample_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Pipeline]:
    pipeline = native_category_pipeline(customers)
    path = tmp_path_factory.mktemp("import") / "churn.joblib"
    joblib.dump(pipeline, path)
    out = import_cli(
        str(path), "--sample", str(sample_csv), "--name", "churn_hgb",
        "--key", "customer_id", "--target", "churned",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    tag = out.stdout.split()[1]
    assert tag.startswith("churn_hgb:"), out.stdout
    return tag, pipeline


def fresh_rows(rows: int = 200) -> pd.DataFrame:
    """Rows the model has not seen, with gaps and a region it never saw."""
    table = make_customer_table(rows, seed=99)
    table.loc[::17, "region"] = "mars"
    return table


def served_answers(tag: str, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    model = load_stored(bentoml.models.get(tag))
    predicted = model.predict_columns(
        {name: table[name].tolist() for name in model.spec.feature_names}
    )
    assert predicted.errors == {}
    return predicted.predictions, predicted.probabilities


def test_keyed_import_prints_the_tag_and_records_the_sample_its_score_and_packages(
    imported_pipeline: tuple[str, Pipeline],
) -> None:
    tag, _ = imported_pipeline
    metadata = bentoml.models.get(tag).info.metadata
    assert metadata["task"] == "classification"
    assert metadata["classes"] == ["no", "yes"]
    assert [f["name"] for f in metadata["features"]] == CATEGORIES + NUMBERS
    assert metadata["features"][0] == {
        "name": "plan",
        "type": "category",
        "categories": ["basic", "plus", "pro"],
    }
    assert metadata["holdout_score"]["metric"] == "accuracy_on_import_sample"
    assert 0.5 < metadata["holdout_score"]["value"] <= 1
    assert metadata["source"] == "churn.joblib"
    assert metadata["sample_rows"] == 600
    assert metadata["packages"]["scikit-learn"] == __import__("sklearn").__version__


def test_an_imported_pipeline_answers_exactly_its_own_predict_and_predict_proba(
    imported_pipeline: tuple[str, Pipeline],
) -> None:
    tag, pipeline = imported_pipeline
    table = fresh_rows()
    predictions, probabilities = served_answers(tag, table)
    as_read = table[CATEGORIES + NUMBERS]
    assert predictions.tolist() == pipeline.predict(as_read).tolist()
    assert probabilities is not None
    assert np.array_equal(probabilities, pipeline.predict_proba(as_read))


def test_an_imported_regressor_answers_its_own_predict(customers: pd.DataFrame) -> None:
    features = ["plan", "monthly_spend", "support_tickets"]
    regressor = make_pipeline(
        ColumnTransformer(
            [
                ("c", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                ("n", SimpleImputer(), ["monthly_spend", "support_tickets"]),
            ]
        ),
        Ridge(),
    ).fit(customers[features], customers["tenure_months"].fillna(0))
    sample = customers[["customer_id", *features, "tenure_months"]]
    tag = keyed_serving.save_model(
        "tenure", regressor, sample, key="customer_id", target="tenure_months"
    )
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["task"] == "regression"
    assert stored.info.metadata["holdout_score"]["metric"] == "r2_on_import_sample"
    table = fresh_rows()
    predictions, probabilities = served_answers(tag, table)
    assert probabilities is None
    assert np.array_equal(predictions, regressor.predict(table[features]))


def test_a_lightgbm_model_is_imported_with_its_rewritten_names_and_answers_its_own(
    customers: pd.DataFrame,
) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    frame = customers[NUMBERS].rename(columns={"monthly_spend": "monthly spend"})
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(frame, customers["churned"])
    assert "monthly_spend" in list(model.feature_names_in_)  # LightGBM rewrote the name
    tag = keyed_serving.save_model("churn_lgbm", model, frame.assign(churned=customers["churned"]),
                                   target="churned")  # fmt: skip
    stored = bentoml.models.get(tag)
    assert [f["name"] for f in stored.info.metadata["features"]] == [
        "tenure_months",
        "monthly spend",
        "support_tickets",
    ]
    assert stored.info.metadata["packages"]["lightgbm"] == lightgbm.__version__
    table = fresh_rows().rename(columns={"monthly_spend": "monthly spend"})
    predictions, probabilities = served_answers(tag, table)
    assert predictions.tolist() == model.predict(table[frame.columns]).tolist()
    assert np.array_equal(probabilities, model.predict_proba(table[frame.columns]))


def test_an_mlflow_sklearn_directory_is_imported_from_its_signature_alone(
    customers: pd.DataFrame, tmp_path: Path
) -> None:
    pytest.importorskip("mlflow")
    import mlflow.sklearn
    from mlflow.models import infer_signature

    frame = customers[NUMBERS].fillna(0)
    model = LogisticRegression(max_iter=500).fit(frame, customers["churned"])
    directory = tmp_path / "mlflow_model"
    mlflow.sklearn.save_model(
        model,
        str(directory),
        signature=infer_signature(frame, customers["churned"]),
        serialization_format="cloudpickle",
    )
    out = import_cli(str(directory), "--name", "churn_mlflow")
    assert out.returncode == 0, out.stderr
    assert "not checked: no sample" in out.stdout
    tag = out.stdout.split()[1]
    table = fresh_rows().fillna({"monthly_spend": 0, "tenure_months": 0})
    predictions, probabilities = served_answers(tag, table)
    assert predictions.tolist() == model.predict(table[NUMBERS]).tolist()
    assert np.array_equal(probabilities, model.predict_proba(table[NUMBERS]))
    # A sample, when given, still checks the model.
    wrong = customers[["plan", "tenure_months"]]
    with pytest.raises(ImportRefused, match=r"missing \['monthly_spend', 'support_tickets'\]"):
        import_model("churn_mlflow", directory, wrong)


def test_columns_that_do_not_match_the_model_are_refused_by_name_and_nothing_is_stored(
    imported_pipeline: tuple[str, Pipeline], sample_csv: Path, tmp_path: Path
) -> None:
    _, pipeline = imported_pipeline
    path = tmp_path / "model.pkl"
    joblib.dump(pipeline, path)
    sample = pd.read_csv(sample_csv).drop(columns=["region"]).assign(age=30)
    sample.to_csv(tmp_path / "sample.csv", index=False)
    out = import_cli(
        str(path), "--sample", str(tmp_path / "sample.csv"), "--name", "mismatched",
        "--key", "customer_id", "--target", "churned",
    )  # fmt: skip
    assert out.returncode == 2
    assert "missing ['region'], extra ['age']" in out.stderr
    assert not [m for m in bentoml.models.list() if m.tag.name == "mismatched"]


class RaisesOnPremium(RegressorMixin, BaseEstimator):
    """Fitted on numbers; raises on any row of the 'pro' plan."""

    def fit(self, x: pd.DataFrame, y: Any) -> RaisesOnPremium:
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        if (x["plan"] == "pro").any():
            raise ValueError("cannot price the pro plan")
        return np.zeros(len(x))


class CountsIntegersOnly(RegressorMixin, BaseEstimator):
    """Answers differently for an integer column than for the same values as floats."""

    def fit(self, x: pd.DataFrame, y: Any) -> CountsIntegersOnly:
        return self

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return np.full(len(x), 1.0 if x["visits"].dtype.kind == "i" else 0.0)


def test_a_model_that_raises_on_its_sample_is_refused(customers: pd.DataFrame) -> None:
    sample = customers[["plan", "support_tickets"]]
    model = RaisesOnPremium().fit(sample, None)
    with pytest.raises(ImportRefused, match="raises on its own sample: ValueError: cannot price"):
        keyed_serving.save_model("raises", model, sample)
    assert not [m for m in bentoml.models.list() if m.tag.name == "raises"]


def test_a_model_that_answers_otherwise_once_the_server_builds_its_frame_is_refused() -> None:
    sample = pd.DataFrame({"visits": [1, 2, 3], "plan": ["a", "b", "a"]})
    with pytest.raises(ImportRefused, match=r"3 of 3 sample rows .*visits: int64 -> float64"):
        keyed_serving.save_model("dtype_sensitive", CountsIntegersOnly(), sample)


def test_a_classifier_without_predict_proba_is_refused_unless_served_as_regression() -> None:
    sample = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": [0, 1, 0, 1]})
    from sklearn.svm import LinearSVC

    model = LinearSVC().fit(sample[["x"]], sample["y"])
    with pytest.raises(ImportRefused, match="no predict_proba"):
        keyed_serving.save_model("svc", model, sample, target="y")
    tag = keyed_serving.save_model("svc", model, sample, target="y", task="regression")
    assert bentoml.models.get(tag).info.metadata["task"] == "regression"


def save_with_packages(source: str, name: str, packages: dict[str, str]) -> str:
    stored = bentoml.models.get(source)
    metadata = {**stored.info.metadata, "packages": packages}
    with bentoml.models.create(name, metadata=metadata) as ref:
        joblib.dump(joblib.load(stored.path_of("model.joblib")), ref.path_of("model.joblib"))
    return str(ref.tag)


def test_a_model_saved_with_another_minor_version_is_refused_unless_allowed(
    imported_pipeline: tuple[str, Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = save_with_packages(imported_pipeline[0], "old_sklearn", {"scikit-learn": "1.2.2"})
    with pytest.raises(ModelRefused, match=r"scikit-learn 1\.2\.2 \(this environment has"):
        check_servable(tag)
    from keyed_serving.settings import get_settings

    monkeypatch.setenv("KEYED_ALLOW_VERSION_MISMATCH", "1")
    get_settings.cache_clear()
    try:
        check_servable(tag)  # a warning, not a refusal
    finally:
        monkeypatch.delenv("KEYED_ALLOW_VERSION_MISMATCH")
        get_settings.cache_clear()


def test_a_model_needing_a_package_that_is_absent_or_of_another_version_is_refused(
    imported_pipeline: tuple[str, Pipeline],
) -> None:
    sklearn_version = __import__("sklearn").__version__
    absent = save_with_packages(
        imported_pipeline[0],
        "needs_absent",
        {"scikit-learn": sklearn_version, "no-such-package": "1.0.0"},
    )
    with pytest.raises(ModelRefused, match=r"no-such-package 1\.0\.0 is not installed") as said:
        check_servable(absent)
    # The extras are advised for the packages they install, not for any missing package.
    assert "lightgbm" not in str(said.value) and "xgboost" not in str(said.value)
    lightgbm = pytest.importorskip("lightgbm")
    other = save_with_packages(
        imported_pipeline[0],
        "old_lightgbm",
        {"scikit-learn": sklearn_version, "lightgbm": "3.3.5"},
    )
    said = re.escape(f"lightgbm 3.3.5 (this environment has {lightgbm.__version__}")
    with pytest.raises(ModelRefused, match=said):
        check_servable(other)


def test_a_plain_bentoml_sklearn_model_without_feature_names_is_refused_naming_keyed_import() -> (
    None
):
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 1, 0, 1])
    tag = str(bentoml.sklearn.save_model("array_fitted", model).tag)
    with pytest.raises(ModelRefused, match="keyed-import MODEL_FILE --sample"):
        check_servable(tag)


def test_the_one_call_shortcut_applies_only_where_it_is_exact() -> None:
    class VotingForest(RandomForestClassifier):
        pass

    assert _predicts_by_largest_probability(make_pipeline(RandomForestClassifier()))
    assert _predicts_by_largest_probability(RandomForestClassifier())
    assert not _predicts_by_largest_probability(VotingForest())
    assert not _predicts_by_largest_probability(make_pipeline(HistGradientBoostingClassifier()))


def test_the_frame_the_runner_builds_keeps_an_unseen_category_as_its_text() -> None:
    from keyed_serving.schemas import FeatureInfo

    frame = to_frame(
        {"region": ["mars", None, 7]},
        [FeatureInfo(name="region", type="category", categories=["north"])],
    )
    assert frame["region"].tolist()[0] == "mars"
    assert frame["region"].tolist()[2] == "7"


@pytest.mark.slow
def test_a_served_imported_pipeline_answers_keys_with_its_own_predictions(
    imported_pipeline: tuple[str, Pipeline],
) -> None:
    tag, pipeline = imported_pipeline
    table = fresh_rows(50)
    instances = [
        {
            "key": row["customer_id"],
            "features": {
                name: (None if pd.isna(row[name]) else row[name]) for name in CATEGORIES + NUMBERS
            },
        }
        for _, row in table.iterrows()
    ]
    with served(MODEL_TAG=tag) as url:
        info = httpx.get(f"{url}/model_info", timeout=30).json()
        response = httpx.post(f"{url}/predict", json={"instances": instances}, timeout=60)
    assert info["holdout_score"]["metric"] == "accuracy_on_import_sample"
    assert info["model"] == tag
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    as_read = table[CATEGORIES + NUMBERS]
    own = pipeline.predict(as_read)
    own_probabilities = pipeline.predict_proba(as_read)
    assert [a["key"] for a in answers] == table["customer_id"].tolist()
    assert [a["prediction"] for a in answers] == own.tolist()
    assert [[a["probabilities"][c] for c in ("no", "yes")] for a in answers] == (
        own_probabilities.tolist()
    )


@pytest.mark.slow
def test_a_plain_bentoml_sklearn_model_is_served_by_tag(customers: pd.DataFrame) -> None:
    frame = customers[NUMBERS].fillna(0)
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(frame, customers["churned"])
    tag = str(bentoml.sklearn.save_model("plain_forest", model).tag)
    rows = frame.head(20)
    with served(MODEL_TAG=tag) as url:
        info = httpx.get(f"{url}/model_info", timeout=30).json()
        response = httpx.post(
            f"{url}/predict",
            json={"keys": list(range(20)), "columns": {c: rows[c].tolist() for c in NUMBERS}},
            timeout=60,
        )
    assert info["task"] == "classification"
    assert [f["name"] for f in info["features"]] == NUMBERS
    assert "holdout_score" not in info
    assert response.status_code == 200, response.text
    assert response.json()["keys"] == list(range(20))
    assert response.json()["predictions"] == model.predict(rows).tolist()


@pytest.mark.slow
def test_a_server_refuses_to_start_with_a_model_of_another_version(
    imported_pipeline: tuple[str, Pipeline], bentoml_home: str
) -> None:
    tag = save_with_packages(imported_pipeline[0], "refused_at_start", {"scikit-learn": "1.2.2"})
    out = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "serve", "service:KeyedPrediction",
         "--host", "127.0.0.1", "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MODEL_TAG": tag},
    )  # fmt: skip
    assert out.returncode != 0
    assert "KEYED_ALLOW_VERSION_MISMATCH=1" in out.stderr + out.stdout


def test_a_boolean_column_the_model_takes_as_a_number_is_served_as_one(
    customers: pd.DataFrame,
) -> None:
    from keyed_serving.tables import feature_values

    table = customers.assign(loyal=customers["tenure_months"].fillna(0) > 24)
    features = ["plan", "monthly_spend", "loyal"]
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("c", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                ("n", SimpleImputer(), ["monthly_spend"]),
                ("b", "passthrough", ["loyal"]),  # booleans as 0/1, as sklearn takes them
            ]
        ),
        LogisticRegression(),
    ).fit(table[features], table["churned"])
    tag = keyed_serving.save_model(
        "loyal",
        pipeline,
        table[["customer_id", *features, "churned"]],
        key="customer_id",
        target="churned",
    )
    metadata = bentoml.models.get(tag).info.metadata
    assert {"name": "loyal", "type": "number"} in metadata["features"]
    # A table's boolean cells, as the client and /predict_file send them.
    sent = {name: feature_values(table[name].tolist(), "category" if name == "plan" else "number")
            for name in features}  # fmt: skip
    assert sent["loyal"][:2] == [float(v) for v in table["loyal"][:2]]
    model = load_stored(bentoml.models.get(tag))
    predicted = model.predict_columns(sent)
    assert predicted.errors == {}
    assert np.array_equal(predicted.probabilities, pipeline.predict_proba(table[features]))
