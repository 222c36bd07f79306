"""XGBoost and LightGBM as first-class models, and the types keyed-import records from what a
fitted model takes: imported from a sample, then predicted through the runner's own code
(``load_stored``, ``predict_columns``), whose answers must be the model's own on the user's
original frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import pytest
import xgboost
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder
from support import write_table

import keyed_serving
from keyed_serving.model.importing import ImportRefused
from keyed_serving.model.store import load_stored
from keyed_serving.tables import read_table

FLOAT32 = float(np.finfo(np.float32).eps)


def numbers_table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})
    table["label"] = (table["a"] + table["b"] > 0).astype(int)
    table["three"] = np.digitize(table["a"] * 2 + table["b"], [-1.0, 1.0])
    table["amount"] = table["a"] * 3 + table["b"] ** 2
    return table


def categorical_table(rows: int, seed: int) -> pd.DataFrame:
    """A frame with pandas categoricals: text categories in a chosen (not sorted) order,
    and integer categories."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "spend": rng.gamma(2.0, 30.0, rows),
            "colour": pd.Categorical(
                rng.choice(["red", "green", "blue"], rows), categories=["red", "green", "blue"]
            ),
            "zone": pd.Categorical(rng.choice([10, 20, 30, 40], rows)),
        }
    )
    table.loc[::23, "colour"] = np.nan
    score = table["spend"] / 60 + (table["colour"] == "green") * 1.5 - (table["zone"] == 30) * 1.0
    table["label"] = (score + rng.normal(0, 0.5, rows) > 1).astype(int)
    return table


def served(tag: str, columns: dict[str, list[object]]) -> tuple[np.ndarray, np.ndarray | None]:
    model = load_stored(bentoml.models.get(tag))
    predicted = model.predict_columns(columns)
    assert predicted.errors == {}
    return predicted.predictions, predicted.probabilities


def within_float32(served: np.ndarray | None, own: np.ndarray) -> bool:
    return served is not None and bool(np.all(np.abs(served - own) <= FLOAT32))


@pytest.mark.parametrize("label", ["label", "three"])
def test_an_xgboost_classifier_is_imported_and_answers_its_own_probabilities(label: str) -> None:
    table = numbers_table(2000, seed=1)
    model = xgboost.XGBClassifier(n_estimators=20).fit(table[["a", "b"]], table[label])
    tag = keyed_serving.save_model("xgb_classifier", model, table[["a", "b", label]], target=label)
    score = bentoml.models.get(tag).info.metadata["holdout_score"]
    assert score["value"] == float(np.mean(model.predict(table[["a", "b"]]) == table[label]))
    fresh = numbers_table(500, seed=2)
    predictions, probabilities = served(tag, {n: fresh[n].tolist() for n in ("a", "b")})
    own = model.predict_proba(fresh[["a", "b"]])
    assert predictions.tolist() == model.predict(fresh[["a", "b"]]).tolist()
    assert within_float32(probabilities, own)
    assert probabilities is not None
    assert np.all(np.abs(probabilities.sum(axis=1) - 1) <= own.shape[1] * FLOAT32)


def test_an_xgboost_regressor_is_imported_and_answers_its_own_predict() -> None:
    table = numbers_table(1000, seed=3)
    model = xgboost.XGBRegressor(n_estimators=20).fit(table[["a", "b"]], table["amount"])
    tag = keyed_serving.save_model(
        "xgb_regressor", model, table[["a", "b", "amount"]], target="amount"
    )
    fresh = numbers_table(300, seed=4)
    predictions, probabilities = served(tag, {n: fresh[n].tolist() for n in ("a", "b")})
    assert probabilities is None
    assert within_float32(predictions, model.predict(fresh[["a", "b"]]))


class DtypeSensitiveProbabilities(ClassifierMixin, BaseEstimator):
    """The same class for every row, with a probability that moves a little when the
    column is not integers: only the probability differs once the server builds its frame."""

    def fit(self, x: pd.DataFrame, y: object) -> DtypeSensitiveProbabilities:
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p = 0.25 if x["visits"].dtype.kind == "i" else 0.25 + 1e-4
        return np.tile([1 - p, p], (len(x), 1))

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return np.zeros(len(x), dtype=np.int64)


def test_a_refusal_names_the_probability_that_differs_and_by_how_much() -> None:
    sample = pd.DataFrame({"visits": [1, 2, 3]})
    model = DtypeSensitiveProbabilities().fit(sample, None)
    with pytest.raises(ImportRefused) as refused:
        keyed_serving.save_model("probability_moves", model, sample)
    said = str(refused.value)
    assert "3 of 3 sample rows" in said
    assert "probability of class 0: 0.75 as read, 0.7499 as served (by 1.0e-04)" in said
    assert "np.int64(0) as read, np.int64(0) as served" not in said


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("sample_as", ["frame", "csv", "parquet"])
def test_a_native_categorical_model_is_served_with_the_categories_it_was_fitted_with(
    library: str, sample_as: str, tmp_path: Path
) -> None:
    table = categorical_table(1500, seed=5)
    features = ["spend", "colour", "zone"]
    if library == "xgboost":
        model = xgboost.XGBClassifier(n_estimators=20, enable_categorical=True)
    else:
        lightgbm = pytest.importorskip("lightgbm")
        model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1)
    model.fit(table[features], table["label"])
    sample: pd.DataFrame | Path = table
    if sample_as != "frame":
        sample = tmp_path / f"sample.{sample_as}"
        if sample_as == "csv":
            table.to_csv(sample, index=False)
        else:
            table.to_parquet(sample)
    tag = keyed_serving.save_model(f"native_{library}", model, sample, target="label")
    recorded = {f["name"]: f for f in bentoml.models.get(tag).info.metadata["features"]}
    assert recorded["colour"]["fitted_categories"] == ["red", "green", "blue"]
    assert recorded["zone"]["fitted_categories"] == [10, 20, 30, 40]
    assert recorded["spend"] == {"name": "spend", "type": "number"}

    fresh = categorical_table(400, seed=6)
    # Category cells as the wire carries them: text; "purple" and 50 the model never saw.
    colour = [None if pd.isna(v) else str(v) for v in fresh["colour"]]
    zone = [str(v) for v in fresh["zone"]]
    colour[:5], zone[5:10] = ["purple"] * 5, ["50"] * 5
    predictions, probabilities = served(
        tag, {"spend": fresh["spend"].tolist(), "colour": colour, "zone": zone}
    )
    # Unseen values are missing to the model, as on its own frame of the fitted dtype.
    own_frame = fresh[features].copy()
    own_frame.loc[:4, "colour"] = np.nan
    own_frame.loc[5:9, "zone"] = np.nan
    assert predictions.tolist() == model.predict(own_frame).tolist()
    assert within_float32(probabilities, model.predict_proba(own_frame))


def strings_model(table: pd.DataFrame) -> Pipeline:
    """The stranger's churn model: one-hot of the TEXT "True"/"False" (and "NA")."""
    as_text = table.assign(active=table["active"].map(str))
    encode = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    return Pipeline(
        [
            (
                "pre",
                ColumnTransformer(
                    [("num", SimpleImputer(), ["spend"]), ("cat", encode, ["plan", "active"])]
                ),
            ),
            ("gb", GradientBoostingClassifier(random_state=0)),
        ]
    ).fit(as_text[["spend", "plan", "active"]], as_text["churned"])


def true_false_table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "spend": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "plan": rng.choice(["NA", "basic", "pro"], rows),
            "active": rng.random(rows) < 0.5,
        }
    )
    table["churned"] = (table["active"] ^ (table["plan"] == "pro")).astype(int)
    return table


def test_a_true_false_column_the_model_encodes_as_text_is_a_category_and_answers_right(
    tmp_path: Path,
) -> None:
    table = true_false_table(400, seed=7)
    model = strings_model(table)
    path = tmp_path / "messy.csv"
    table.to_csv(path, index=False)
    assert read_table(path)["active"].dtype == bool  # the reader sees booleans
    tag = keyed_serving.save_model("true_false_text", model, path, target="churned")
    metadata = bentoml.models.get(tag).info.metadata
    active = next(f for f in metadata["features"] if f["name"] == "active")
    assert active["type"] == "category"
    as_text = table.assign(active=table["active"].map(str))[["spend", "plan", "active"]]
    own = model.predict(as_text)
    assert metadata["holdout_score"]["value"] == float(np.mean(own == table["churned"]))
    predictions, _ = served(tag, {n: as_text[n].tolist() for n in ("spend", "plan", "active")})
    assert predictions.tolist() == own.tolist()


def test_a_column_whose_values_the_models_encoder_never_saw_is_refused() -> None:
    table = true_false_table(300, seed=8)
    model = strings_model(table)
    # The sample spells the column otherwise than the model was fitted on: the encoder
    # ignores every value, as read and as served alike, so both answers agree and are wrong.
    sample = table.assign(active=table["active"].map({True: "yes", False: "no"}))
    with pytest.raises(ImportRefused, match=r"'active'.*none of the sample's values"):
        keyed_serving.save_model("never_seen", model, sample[["spend", "plan", "active"]])


@pytest.mark.parametrize("as_file", [False, True])
def test_nullable_integer_and_boolean_columns_with_gaps_are_imported(
    as_file: bool, tmp_path: Path
) -> None:
    rng = np.random.default_rng(9)
    rows = 300
    table = pd.DataFrame(
        {
            "visits": pd.array(rng.integers(0, 10, rows), dtype="Int64"),
            "member": pd.array(rng.random(rows) < 0.5, dtype="boolean"),
        }
    )
    table.loc[3, "visits"] = pd.NA
    table.loc[5, "member"] = pd.NA
    label = (table["visits"].fillna(0).astype(int) > 4).astype(int).to_numpy()
    numbers = table.astype("float64")
    model = HistGradientBoostingClassifier(max_iter=10).fit(numbers, label)
    sample: pd.DataFrame | Path = table.assign(label=label)
    if as_file:
        sample = tmp_path / "sample.parquet"
        table.assign(label=label).to_parquet(sample)
    tag = keyed_serving.save_model("nullable", model, sample, target="label")
    predictions, probabilities = served(tag, {n: numbers[n].tolist() for n in table.columns})
    assert predictions.tolist() == model.predict(numbers).tolist()
    assert np.array_equal(probabilities, model.predict_proba(numbers))


def test_the_import_sample_accuracy_compares_integer_labels_read_with_a_gap(
    tmp_path: Path,
) -> None:
    table = numbers_table(500, seed=10)
    model = xgboost.XGBClassifier(n_estimators=10).fit(table[["a", "b"]], table["label"])
    path = tmp_path / "sample.csv"
    with_gap = table[["a", "b", "label"]].astype({"label": object})
    with_gap.loc[7, "label"] = None
    with_gap.to_csv(path, index=False)
    assert read_table(path)["label"].dtype == np.float64  # 1.0, 0.0 and NaN
    tag = keyed_serving.save_model("label_gap", model, path, target="label")
    known = table.index != 7
    expected = np.mean(model.predict(table[["a", "b"]])[known] == table["label"][known])
    assert bentoml.models.get(tag).info.metadata["holdout_score"]["value"] == pytest.approx(
        expected
    )


def zip_codes_table(rows: int, seed: int) -> pd.DataFrame:
    """Zip codes as text with leading zeros, one of them missing: a CSV reader takes them
    for numbers (02134 -> 2134.0)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "zip": rng.choice(["00501", "02134", "10001", "94105"], rows).astype(object),
            "x": rng.normal(size=rows),
        }
    )
    table.loc[5, "zip"] = np.nan
    east = table["zip"].isin(["02134", "10001"]).to_numpy()
    table["side"] = np.where(east ^ (rng.random(rows) < 0.1), "east", "west")
    return table


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_a_text_category_column_of_a_file_sample_is_read_as_the_text_written(
    suffix: str, tmp_path: Path
) -> None:
    """The model's encoder knows the zips as text; a CSV sample of the same rows must be
    checked and scored with that text ("02134"), not with the number a reader makes of it."""
    table = zip_codes_table(600, seed=11)
    model = Pipeline(
        [
            (
                "encode",
                ColumnTransformer(
                    [("zip", OneHotEncoder(handle_unknown="ignore"), ["zip"])],
                    remainder="passthrough",
                ),
            ),
            ("predict", GradientBoostingClassifier(random_state=0)),
        ]
    ).fit(table[["zip", "x"]], table["side"])
    path = tmp_path / f"zips.{suffix}"
    if suffix == "csv":
        table.to_csv(path, index=False)
    elif suffix == "parquet":
        table.to_parquet(path)
    else:
        table.to_json(path, orient="records", lines=True)
    tag = keyed_serving.save_model(f"zips_{suffix}", model, path, target="side")
    metadata = bentoml.models.get(tag).info.metadata
    zip_feature = next(f for f in metadata["features"] if f["name"] == "zip")
    assert zip_feature["type"] == "category"
    assert zip_feature["categories"] == ["00501", "02134", "10001", "94105"]
    own = model.predict(table[["zip", "x"]])
    assert metadata["holdout_score"]["value"] == float(np.mean(own == table["side"]))


def none_gaps_table(rows: int, seed: int) -> pd.DataFrame:
    """A text column whose gaps are Python None (DataFrame.from_records, SQL drivers): an
    imputer of NaN leaves them, and the encoder learns None as a category of its own."""
    rng = np.random.default_rng(seed)
    words = rng.choice(["a", "b", "c", "None", "nan"], rows).astype(object)
    words[rng.random(rows) < 0.2] = None
    table = pd.DataFrame({"w": pd.Series(words, dtype=object), "x": rng.normal(size=rows)})
    signal = np.array([{"a": 1.0, "b": -1.0}.get(w, 2.0) if w else -2.5 for w in words])
    table["y"] = np.where(signal + table["x"] + rng.normal(0, 0.3, rows) > 0, "pos", "neg")
    return table


@pytest.mark.parametrize("sample", ["frame", ".csv", ".parquet", ".jsonl"])
def test_a_category_whose_encoder_learned_none_for_a_gap_is_given_none_for_a_gap(
    sample: str, tmp_path: Path
) -> None:
    """The server gave such a model NaN for a missing cell, a category it never saw: every
    gap row answered otherwise than the model (found by a stranger's review)."""
    table = none_gaps_table(600, seed=3)
    words = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="MISSING")),
            ("encode", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    model = Pipeline(
        [
            ("pre", ColumnTransformer([("w", words, ["w"])], remainder="passthrough")),
            ("predict", GradientBoostingClassifier(random_state=0)),
        ]
    ).fit(table[["w", "x"]], table["y"])
    if sample == "frame":
        source: Any = table
    else:
        source = tmp_path / f"sample{sample}"
        write_table(table, source)
    tag = keyed_serving.save_model(f"none_gaps{sample.strip('.')}", model, source, target="y")
    metadata = bentoml.models.get(tag).info.metadata
    w = next(f for f in metadata["features"] if f["name"] == "w")
    assert w["type"] == "category" and w["missing"] == "none"
    predictions, probabilities = served(tag, {"w": table["w"].tolist(), "x": table["x"].tolist()})
    assert predictions.tolist() == model.predict(table[["w", "x"]]).tolist()
    np.testing.assert_allclose(probabilities, model.predict_proba(table[["w", "x"]]), rtol=1e-12)
    own = float(np.mean(model.predict(table[["w", "x"]]) == table["y"]))
    assert metadata["holdout_score"]["value"] == own
