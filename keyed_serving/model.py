"""The model stage: the fitted pipeline, what it takes, and keyed prediction of a micro-batch.

Knows nothing of HTTP. The same ``to_frame`` builds the frame at training and at serving
time, so the pipeline always sees columns of the dtypes it was fitted on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd

from keyed_serving.schemas import (
    FeatureInfo,
    InstanceError,
    KeyedResult,
    KeyedRow,
    ModelInfo,
    Score,
)

logger = logging.getLogger("keyed_serving.model")
MODEL_FILE = "model.joblib"
Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model takes and gives, from its BentoML metadata (no unpickling needed)."""

    tag: str
    task: Task
    target: str
    features: tuple[FeatureInfo, ...]
    classes: tuple[Any, ...] | None
    holdout_score: Score

    @classmethod
    def from_metadata(cls, tag: str, metadata: dict[str, Any]) -> ModelSpec:
        classes = metadata.get("classes")
        return cls(
            tag=tag,
            task=metadata["task"],
            target=metadata["target"],
            features=tuple(FeatureInfo.model_validate(f) for f in metadata["features"]),
            classes=tuple(classes) if classes is not None else None,
            holdout_score=Score.model_validate(metadata["holdout_score"]),
        )

    @classmethod
    def load(cls, tag: str) -> ModelSpec:
        """From the model store, metadata only: the pipeline is not unpickled."""
        import bentoml

        stored = bentoml.models.get(tag)
        return cls.from_metadata(str(stored.tag), stored.info.metadata)

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


def to_frame(columns: Mapping[str, Sequence[Any]], features: Sequence[FeatureInfo]) -> pd.DataFrame:
    """Columns by feature name -> the frame the pipeline takes (missing values as NaN)."""
    data: dict[str, Any] = {}
    for feature in features:
        values = columns[feature.name]
        if feature.type == "number":
            data[feature.name] = pd.Series(values, dtype="float64")
        else:
            # Categories are strings on the wire; a CSV's True or 7 becomes "True" or "7".
            series = pd.Series(values, dtype=object)
            missing = series.isna()
            text = series.map(str, na_action="ignore").astype(object)
            text[missing] = np.nan
            data[feature.name] = text
    return pd.DataFrame(data, columns=[f.name for f in features])


class LoadedModel:
    """The fitted pipeline with its spec; predicts keyed rows, keys kept beside each row."""

    def __init__(self, spec: ModelSpec, pipeline: Any) -> None:
        self.spec = spec
        self.pipeline = pipeline

    @classmethod
    def load(cls, tag: str, metadata: dict[str, Any], path: str) -> LoadedModel:
        return cls(ModelSpec.from_metadata(tag, metadata), joblib.load(path))

    def predict_rows(self, rows: Sequence[KeyedRow]) -> list[KeyedResult]:
        """One result per row, in order. If the model raises on the micro-batch, the rows it
        cannot take are found by bisection and answered with an error each; the others,
        which may belong to other callers, are predicted as usual."""
        try:
            return self._predict(rows)
        except Exception as exc:
            if len(rows) == 1:
                logger.warning("model raised on one row: %s", _first_line(exc))
                return [_failed(rows[0], exc)]
        middle = len(rows) // 2
        return self.predict_rows(rows[:middle]) + self.predict_rows(rows[middle:])

    def _predict(self, rows: Sequence[KeyedRow]) -> list[KeyedResult]:
        if not rows:
            return []
        names = self.spec.feature_names
        for row in rows:
            if len(row.values) != len(names):
                raise ValueError(
                    f"row with key {row.key!r} has {len(row.values)} values, "
                    f"the model takes {len(names)}"
                )
        columns = {name: [row.values[i] for row in rows] for i, name in enumerate(names)}
        frame = to_frame(columns, self.spec.features)
        predictions = self.pipeline.predict(frame)
        probabilities = (
            self.pipeline.predict_proba(frame) if self.spec.task == "classification" else None
        )
        if len(predictions) != len(rows):  # a pipeline that drops rows must not shift keys
            raise RuntimeError(
                f"model returned {len(predictions)} predictions for {len(rows)} rows"
            )
        return [
            KeyedResult(
                chunk=row.chunk,
                key=row.key,
                prediction=_native(predictions[i]),
                probabilities=None if probabilities is None else _probabilities(probabilities[i]),
            )
            for i, row in enumerate(rows)
        ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _failed(row: KeyedRow, exc: BaseException) -> KeyedResult:
    # The exception's first line only: it says what the model could not take (an unknown
    # category, a value out of range), never a stack trace.
    return KeyedResult(
        chunk=row.chunk,
        key=row.key,
        error=InstanceError(
            code="model_error",
            message=f"instance with key {row.key!r}: the model could not predict it: "
            f"{_first_line(exc)}",
        ),
    )


def _native(value: Any) -> Any:
    """numpy scalar -> the JSON-able Python scalar it stands for."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"model produced a non-finite prediction: {value}")
    return value


def _probabilities(row: np.ndarray) -> list[float]:
    # predict_proba rows sum to 1 up to float error; renormalise so callers can rely on it.
    total = float(row.sum())
    return [float(p) / total for p in row]
