"""Training: a user's table (or a scikit-learn data set) -> a fitted pipeline in the model store.

The pipeline takes a DataFrame of the feature columns (numbers and strings, with missing
values) as built by :func:`keyed_serving.model.spec.to_frame`, the same function the runner uses.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from typing import Any

import bentoml
import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from keyed_serving.model.spec import Task, to_frame
from keyed_serving.model.store import MODEL_FILE
from keyed_serving.schemas import FeatureInfo
from keyed_serving.settings import DEFAULT_MODEL_NAME

# An integer target with at most this many distinct values is taken for class labels.
MAX_INFERRED_CLASSES = 20
# Categories listed in /model_info per feature; more are accepted but not listed.
MAX_LISTED_CATEGORIES = 50
RANDOM_STATE = 0


@dataclass(frozen=True)
class TrainedModel:
    tag: str
    task: Task
    metric: str
    score: float


def infer_task(target: pd.Series) -> Task:
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    as_float = values.astype("float64")
    integral = bool(np.all(np.mod(as_float, 1) == 0))
    if integral and values.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def describe_features(frame: pd.DataFrame) -> list[FeatureInfo]:
    """Numbers (decimals included) are number features; datetime64 columns are datetime
    features (with their dtype, which the model is given back); anything else is a category,
    named by ``str`` of each value (a boolean column's categories are "True" and "False",
    which is what the client and the file routes send for a boolean cell)."""
    features = []
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_datetime64_any_dtype(column):
            # Sent as ISO 8601 text, given to the model in the dtype it was fitted with.
            features.append(FeatureInfo(name=str(name), type="datetime", dtype=str(column.dtype)))
            continue
        numbers = pd.api.types.is_numeric_dtype(column) or _all_decimals(column)
        if numbers and not pd.api.types.is_bool_dtype(column):
            features.append(FeatureInfo(name=str(name), type="number"))
        else:
            seen = sorted({str(v) for v in column.dropna().unique()})
            features.append(
                FeatureInfo(
                    name=str(name),
                    type="category",
                    categories=seen if len(seen) <= MAX_LISTED_CATEGORIES else None,
                )
            )
    return features


def _all_decimals(column: pd.Series) -> bool:
    """A column of ``decimal.Decimal`` (a database export, read into pandas as objects)."""
    values = column.dropna()
    return len(values) > 0 and all(isinstance(v, decimal.Decimal) for v in values)


def build_pipeline(features: list[FeatureInfo], task: Task) -> Pipeline:
    numeric = [f.name for f in features if f.type == "number"]
    categorical = [f.name for f in features if f.type == "category"]
    preprocess = ColumnTransformer(
        [
            ("numbers", SimpleImputer(strategy="median", keep_empty_features=True), numeric),
            (
                "categories",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                        # Unseen categories at serving time encode as all zeros, not an error.
                        ("encode", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                categorical,
            ),
        ],
        remainder="drop",
    )
    # n_jobs=1: with joblib threads a forest's predict pays a fixed start-up cost per call,
    # which dominates the small micro-batches a server sees.
    estimator = (
        RandomForestClassifier(n_estimators=100, random_state=RANDOM_STATE, n_jobs=1)
        if task == "classification"
        else RandomForestRegressor(n_estimators=100, random_state=RANDOM_STATE, n_jobs=1)
    )
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def train_and_save(
    table: pd.DataFrame,
    *,
    target: str,
    name: str,
    key: str | None = None,
    task: Task | None = None,
    source: str = "",
) -> TrainedModel:
    """Fit on 80% of ``table``, score on the other 20%, save the fitted pipeline."""
    if target not in table.columns:
        raise ValueError(f"target column {target!r} is not in the table: {list(table.columns)}")
    if key is not None and key not in table.columns:
        raise ValueError(f"key column {key!r} is not in the table: {list(table.columns)}")
    if key == target:
        raise ValueError("the key column cannot be the target")
    table = table[table[target].notna()]
    if len(table) < 10:
        raise ValueError(f"need at least 10 rows with a target, got {len(table)}")
    task = task or infer_task(table[target])
    feature_columns = [c for c in table.columns if c not in (target, key)]
    if not feature_columns:
        raise ValueError("no feature columns left besides the target and key")
    features = describe_features(table[feature_columns])
    frame = to_frame({f.name: table[f.name].tolist() for f in features}, features)
    labels = table[target]
    if task == "classification":
        labels = labels.map(_native_label)
    stratify = labels if task == "classification" and labels.value_counts().min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        frame, labels, test_size=0.2, random_state=RANDOM_STATE, stratify=stratify
    )
    pipeline = build_pipeline(features, task)
    pipeline.fit(x_train, y_train)
    predicted = pipeline.predict(x_test)
    if task == "classification":
        metric, score = "accuracy", float(accuracy_score(y_test, predicted))
        classes: list[Any] | None = [_native_label(c) for c in pipeline.classes_]
    else:
        metric, score = "r2", float(r2_score(y_test, predicted))
        classes = None
    metadata = {
        "task": task,
        "target": target,
        "key_column": key,
        "features": [f.model_dump(exclude_none=True) for f in features],
        "classes": classes,
        "holdout_score": {"metric": metric, "value": score},
        "training_rows": len(x_train),
        "holdout_rows": len(x_test),
        "source": source,
        "sklearn_version": sklearn.__version__,
    }
    # BentoML's metadata takes no None values: leave absent what does not apply.
    metadata = {k: v for k, v in metadata.items() if v is not None}
    with bentoml.models.create(name, metadata=metadata) as ref:
        joblib.dump(pipeline, ref.path_of(MODEL_FILE))
    return TrainedModel(tag=str(ref.tag), task=task, metric=metric, score=score)


def _native_label(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def train_default(name: str = DEFAULT_MODEL_NAME) -> TrainedModel:
    """Iris, the data set everyone recognises, with its species names as class labels."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    table = iris.frame.rename(columns=lambda c: c.replace(" (cm)", "_cm").replace(" ", "_"))
    table["species"] = [str(iris.target_names[i]) for i in iris.target]
    table = table.drop(columns=["target"])
    return train_and_save(table, target="species", name=name, source="sklearn.datasets.load_iris")


def default_model_exists(name: str = DEFAULT_MODEL_NAME) -> bool:
    try:
        bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        return False
    return True
