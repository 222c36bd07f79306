"""What a model takes and gives: its spec, and the frame it is fed.

The lowest module of the model part: the predicting half and the store half both build on it,
and the serving path reads a spec without loading a model. The same ``to_frame`` builds the
frame at training and at serving time, so the pipeline always sees columns of the dtypes it
was fitted on.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from keyed_serving.lazy import numpy as np

if TYPE_CHECKING:  # pandas loads with the model, in the runner only
    import pandas as pd

from keyed_serving.schemas import FeatureInfo, ModelInfo, Score

Task = Literal["classification", "regression"]
# What a prediction is, as the wire, the files and Spark type it: class labels, or what a
# model served by ``predict`` alone gives (an SVC without probabilities predicts labels).
PredictionType = Literal["number", "integer", "boolean", "text"]


class ModelRefused(RuntimeError):
    """A stored model this environment cannot serve; the message says why and what to do."""


class ImportRefused(ValueError):
    """A model keyed-import cannot serve as it is; nothing was stored. The message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model takes and gives, from its BentoML metadata (no unpickling needed)."""

    tag: str
    task: Task
    target: str | None
    features: tuple[FeatureInfo, ...]
    classes: tuple[Any, ...] | None
    holdout_score: Score | None
    # Recorded at import for a regression-served model whose predictions are not numbers.
    recorded_prediction_type: PredictionType | None = None

    @classmethod
    def from_metadata(cls, tag: str, metadata: dict[str, Any]) -> ModelSpec:
        classes = metadata.get("classes")
        score = metadata.get("holdout_score")
        return cls(
            tag=tag,
            task=metadata["task"],
            target=metadata.get("target"),
            features=tuple(FeatureInfo.model_validate(f) for f in metadata["features"]),
            classes=tuple(classes) if classes is not None else None,
            holdout_score=Score.model_validate(score) if score is not None else None,
            recorded_prediction_type=metadata.get("prediction_type"),
        )

    @classmethod
    def from_estimator(cls, tag: str, estimator: Any) -> ModelSpec:
        """What a plain ``bentoml.sklearn`` model takes, from the fitted estimator itself:
        the features it was fitted on (``feature_names_in_``), all numbers."""
        names = getattr(estimator, "feature_names_in_", None)
        if names is None:
            raise ModelRefused(
                f"model {tag} was saved with bentoml.sklearn and has no feature_names_in_ (it "
                "was fitted on an array, not a DataFrame), so the server cannot tell which "
                "features it takes. Import it with a sample of the rows it takes instead: "
                "keyed-import MODEL_FILE --sample TABLE --name NAME"
            )
        task = estimator_task(estimator)
        return cls(
            tag=tag,
            task=task,
            target=None,
            features=tuple(FeatureInfo(name=str(name), type="number") for name in names),
            classes=class_labels(estimator) if task == "classification" else None,
            holdout_score=None,
        )

    @property
    def prediction_type(self) -> PredictionType:
        """What each prediction is: the class labels' type, what the import sample showed
        (a model served by ``predict`` alone), or a number."""
        if self.recorded_prediction_type is not None:
            return self.recorded_prediction_type
        if self.task == "classification" and self.classes:
            return prediction_type_of(self.classes)
        return "number"

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def info(self, max_instances: int) -> ModelInfo:
        return ModelInfo(
            model=self.tag,
            task=self.task,
            target=self.target,
            features=list(self.features),
            classes=list(self.classes) if self.classes is not None else None,
            holdout_score=self.holdout_score,
            max_instances=max_instances,
        )


def to_frame(
    columns: Mapping[str, Sequence[Any] | np.ndarray], features: Sequence[FeatureInfo]
) -> pd.DataFrame:
    """Columns by feature name -> the frame the pipeline takes (missing values as NaN)."""
    import pandas as pd

    names = [f.name for f in features]
    if all(f.type == "number" for f in features):
        # One float64 block: pandas builds it several times faster than a dict of columns
        # (measured: a tenth of the runner's time at 100-row requests went to that).
        # Column by column in memory, as pandas holds a table it read: some models' float
        # sums (a linear model's matrix product) differ in the last bit with the layout.
        values = np.vstack([_numbers(columns[n]) for n in names])
        return pd.DataFrame(values.T, columns=names, copy=False)
    data: dict[str, Any] = {}
    for feature in features:
        given = columns[feature.name]
        if feature.type == "number":
            data[feature.name] = pd.Series(_numbers(given), dtype="float64")
        elif feature.fitted_categories is not None:
            data[feature.name] = fitted_categorical(given, feature.fitted_categories)
        elif feature.type == "datetime":
            data[feature.name] = datetimes(given, feature.dtype)
        else:
            # Categories are strings on the wire; a CSV's True or 7 becomes "True" or "7".
            series = pd.Series(given, dtype=object)
            missing = series.isna()
            text = series.map(str, na_action="ignore").astype(object)
            # A gap is NaN, or None for a model that learned None as a category.
            data[feature.name] = text.where(~missing, None if feature.missing == "none" else np.nan)
    return pd.DataFrame(data, columns=names)


def prediction_type_of(values: Sequence[Any] | np.ndarray) -> PredictionType:
    """The type of these predictions or class labels: booleans, integers, numbers (integers
    and floats mixed, or none at all) or text (anything else)."""
    plain = values.tolist() if isinstance(values, np.ndarray) else values
    kinds = {type(v.item() if isinstance(v, np.generic) else v) for v in plain}
    if kinds and kinds == {bool}:
        return "boolean"
    if kinds and kinds == {int}:
        return "integer"
    if kinds <= {int, float}:
        return "number"
    return "text"


def fitted_categorical(given: Sequence[Any] | np.ndarray, categories: Sequence[Any]) -> Any:
    """Category cells (text on the wire) as the pandas categorical a native categorical
    model was fitted with: its categories in its order, each cell matched by its text (and,
    for number categories, by value: ``20.0`` is ``20``). A cell that is none of them is
    missing, which is what XGBoost and LightGBM make of an unseen category on their own."""
    import pandas as pd

    by_text = {str(c): c for c in categories}
    by_value = {
        float(c): c
        for c in categories
        if isinstance(c, int | float | np.number) and not isinstance(c, bool)
    }

    def category(cell: Any) -> Any:
        if cell is None or cell is pd.NA or (isinstance(cell, float) and np.isnan(cell)):
            return None
        text = str(cell)
        if text in by_text:
            return by_text[text]
        if by_value:
            try:
                return by_value.get(float(text))
            except ValueError:
                return None
        return None

    dtype = pd.CategoricalDtype(list(categories), ordered=False)
    return pd.Series(pd.Categorical([category(c) for c in given], dtype=dtype))


def _numbers(given: Sequence[Any] | np.ndarray) -> np.ndarray:
    """A number feature's values as float64, missing as NaN: ``pd.NA`` too, which a pandas
    ``Int64`` or ``boolean`` column holds for a gap and NumPy cannot cast."""
    try:
        return np.asarray(given, dtype=np.float64)
    except TypeError:
        import pandas as pd

        return np.array([np.nan if v is None or v is pd.NA else v for v in given], np.float64)


def parse_datetime(text: str) -> datetime.datetime:
    """A datetime feature's value on the wire (ISO 8601 text) as a date-time; raises
    ``ValueError``. The one parser of the validate stage and the model frame."""
    return datetime.datetime.fromisoformat(text)


def takes_time_zones(dtype: str | None) -> bool:
    """Whether a datetime feature of this pandas dtype holds zone-aware date-times."""
    return dtype is not None and "," in dtype


def datetimes(values: Sequence[Any] | np.ndarray, dtype: str | None) -> pd.Series:
    """A datetime feature's values (ISO 8601 text, date-times, missing) as a column of the
    dtype the model was fitted with: its unit, and its time zone for an aware one."""
    import pandas as pd

    parsed = [parse_datetime(value) if isinstance(value, str) else value for value in values]
    series = pd.Series(parsed, dtype=object)
    if not takes_time_zones(dtype):
        return pd.to_datetime(series).astype(dtype or "datetime64[ns]")
    zoned = pd.api.types.pandas_dtype(dtype)
    return pd.to_datetime(series, utc=True).dt.tz_convert(zoned.tz).astype(zoned)


def estimator_task(estimator: Any) -> Task:
    from sklearn.base import is_classifier

    return (
        "classification"
        if is_classifier(estimator) or hasattr(estimator, "classes_")
        else "regression"
    )


def class_labels(estimator: Any) -> tuple[Any, ...]:
    """The estimator's classes as plain Python values (NumPy scalars do not go to JSON)."""
    return tuple(c.item() if isinstance(c, np.generic) else c for c in estimator.classes_)
