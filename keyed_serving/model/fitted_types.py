"""What a fitted model says it takes: a feature's type from the model itself where it says
(an encoder's categories, XGBoost's and LightGBM's feature types and native categoricals, a
lone scikit-learn predictor's numbers), and a sample as the model takes it. keyed-import
types features by this before the sample's own dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from keyed_serving.model.spec import ImportRefused
from keyed_serving.schemas import FeatureInfo


def fitted_types(model: Any, names: Sequence[str]) -> dict[str, FeatureInfo]:
    """The features whose type the fitted model itself says, by the sample's column name
    (``names``: in the model's order, as ``match_features`` gives them): XGBoost's and
    LightGBM's native categoricals with the categories they were fitted with, and their
    other features as numbers; the columns an encoder (OneHotEncoder, OrdinalEncoder) of
    a leading ColumnTransformer knows as text or as numbers; every feature of a lone
    scikit-learn predictor, which takes numbers. The others are not in it."""
    first = model
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    library = type(first).__module__.split(".")[0]
    if library == "xgboost":
        return _xgboost_types(first, names)
    if library == "lightgbm":
        return _lightgbm_types(first, names)
    if library != "sklearn":
        return {}
    encoded = encoded_categories(first)
    if encoded:
        decided = {}
        for name, categories in encoded.items():
            listed = categories.tolist()
            known = [c for c in listed if not pd.isna(c)]
            if known and all(isinstance(c, str) for c in known):
                # An encoder that learned None, not NaN, as a category: a text column whose
                # gaps were None (an imputer of NaN leaves them). A gap must reach it so.
                none_gap = any(c is None for c in listed) and not any(
                    isinstance(c, float) and np.isnan(c) for c in listed
                )
                decided[name] = FeatureInfo(
                    name=name, type="category", missing="none" if none_gap else None
                )
            elif known and all(isinstance(c, int | float | bool | np.number) for c in known):
                decided[name] = FeatureInfo(name=name, type="number")
        return {name: decided[name] for name in names if name in decided}
    from sklearn.base import BaseEstimator

    native = getattr(first, "is_categorical_", None)  # HistGradientBoosting's categoricals
    wraps = any(isinstance(v, BaseEstimator) for v in first.get_params(deep=False).values())
    if callable(getattr(first, "predict", None)) and not wraps:
        return {
            name: FeatureInfo(name=name, type="number")
            for i, name in enumerate(names)
            if native is None or not native[i]
        }
    return {}


def _xgboost_types(model: Any, names: Sequence[str]) -> dict[str, FeatureInfo]:
    booster = model.get_booster()
    types = booster.feature_types
    if types is None or len(types) != len(names):
        return {}
    if not hasattr(booster, "get_categories"):  # an older XGBoost does not record them
        return {}
    fitted = dict(booster.get_categories(export_to_arrow=True).to_arrow())
    model_names = booster.feature_names or list(names)
    decided = {}
    for name, model_name, kind in zip(names, model_names, types, strict=True):
        if kind == "c":
            categories = fitted.get(model_name)
            if categories is None:  # fitted on codes alone: nothing to give the frame
                continue
            decided[name] = FeatureInfo(
                name=name, type="category", fitted_categories=_sendable(name, categories)
            )
        else:
            decided[name] = FeatureInfo(name=name, type="number")
    return decided


def _lightgbm_types(model: Any, names: Sequence[str]) -> dict[str, FeatureInfo]:
    booster = model.booster_
    categorical = list(booster.params.get("categorical_column") or [])
    fitted = booster.pandas_categorical or []
    if len(booster.feature_name()) != len(names):
        return {}
    if categorical and len(fitted) != len(categorical):
        # Categoricals named by index over integer codes: the model takes the codes.
        return {}
    by_index = dict(zip(categorical, fitted, strict=True))
    return {
        name: FeatureInfo(
            name=name, type="category", fitted_categories=_sendable(name, by_index[i])
        )
        if i in by_index
        else FeatureInfo(name=name, type="number")
        for i, name in enumerate(names)
    }


def as_the_model_takes(described: FeatureInfo, taken: FeatureInfo | None) -> FeatureInfo:
    """The feature as the model takes it, with the categories the sample shows listed."""
    if taken is None:
        return described
    if taken.type == described.type == "category":
        return taken.model_copy(update={"categories": described.categories})
    return taken


def _sendable(name: str, categories: Any) -> list[Any]:
    """A native categorical's fitted categories as JSON values, which a cell's text names."""
    values = [
        plain_value(c)
        for c in (categories.to_pylist() if hasattr(categories, "to_pylist") else categories)
    ]
    odd = [v for v in values if not isinstance(v, str | int | float | bool)]
    if odd:
        raise ImportRefused(
            f"the model takes {name!r} as a categorical of {type(odd[0]).__name__} values "
            f"({odd[0]!r}, ...): only text and number categories can be sent as text"
        )
    return values


def encoded_categories(step: Any) -> dict[str, np.ndarray]:
    """The categories a fitted encoder knows, by the input column it encodes: for a
    ColumnTransformer, each of its transformers that is an encoder, or a Pipeline of
    imputers ending in one (imputers change only missing values); for a bare encoder,
    its columns."""
    if hasattr(step, "categories_") and hasattr(step, "feature_names_in_"):
        return {str(n): c for n, c in zip(step.feature_names_in_, step.categories_, strict=True)}
    if not hasattr(step, "transformers_"):
        return {}
    fitted_names = [str(n) for n in getattr(step, "feature_names_in_", [])]
    found: dict[str, np.ndarray] = {}
    for _, transformer, columns in step.transformers_:
        encoder = transformer
        if hasattr(transformer, "steps"):
            *before, (_, encoder) = transformer.steps
            if not all(type(s).__name__ == "SimpleImputer" for _, s in before):
                continue
        categories = getattr(encoder, "categories_", None)
        if categories is None:
            continue
        if isinstance(columns, str):
            columns = [columns]
        try:
            named = [
                fitted_names[c] if isinstance(c, int | np.integer) else str(c) for c in columns
            ]
        except (TypeError, IndexError):
            continue
        if len(named) == len(categories):
            found.update(zip(named, categories, strict=True))
    return found


def as_taken(table: pd.DataFrame, features: Sequence[FeatureInfo]) -> pd.DataFrame:
    """The sample with the columns of ``features`` as the model takes them: a category
    column read as booleans or numbers as its text, a native categorical of another dtype
    as the model's categorical dtype, a gap as None where the model learned None."""
    from keyed_serving.model.spec import fitted_categorical

    changed: dict[str, Any] = {}
    for feature in features:
        column = table[feature.name]
        if feature.fitted_categories is not None:
            fitted = pd.CategoricalDtype(feature.fitted_categories)
            if column.dtype != fitted:
                changed[feature.name] = fitted_categorical(
                    column.tolist(), feature.fitted_categories
                )
                changed[feature.name].index = table.index
        elif feature.type == "category" and not (
            pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)
        ):
            text = column.map(str, na_action="ignore").astype(object)
            changed[feature.name] = text.where(column.notna(), np.nan)
        if feature.missing == "none":
            cells = changed.get(feature.name, column).astype(object)
            changed[feature.name] = cells.where(cells.notna(), None)
    return table.assign(**changed) if changed else table


def is_boolean_column(column: pd.Series) -> bool:
    """A column of booleans, with or without gaps (a Parquet boolean with nulls reads as
    objects)."""
    if pd.api.types.is_bool_dtype(column):
        return True
    values = column.dropna()
    return len(values) > 0 and all(isinstance(v, bool | np.bool_) for v in values)


def plain_value(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (for JSON and for messages)."""
    return value.item() if isinstance(value, np.generic) else value
