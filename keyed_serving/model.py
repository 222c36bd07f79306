"""The model stage: the fitted pipeline, what it takes, and keyed prediction of a micro-batch.

Knows nothing of HTTP. The same ``to_frame`` builds the frame at training and at serving
time, so the pipeline always sees columns of the dtypes it was fitted on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd

from keyed_serving.schemas import (
    BlockError,
    BlockResult,
    FeatureInfo,
    InstanceError,
    KeyedBlock,
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


def to_frame(
    columns: Mapping[str, Sequence[Any] | np.ndarray], features: Sequence[FeatureInfo]
) -> pd.DataFrame:
    """Columns by feature name -> the frame the pipeline takes (missing values as NaN)."""
    names = [f.name for f in features]
    if all(f.type == "number" for f in features):
        # One float64 block: pandas builds it several times faster than a dict of columns
        # (measured: a tenth of the runner's time at 100-row requests went to that).
        values = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
        return pd.DataFrame(values.reshape(-1, len(names)), columns=names, copy=False)
    data: dict[str, Any] = {}
    for feature in features:
        given = columns[feature.name]
        if feature.type == "number":
            data[feature.name] = pd.Series(given, dtype="float64")
        else:
            # Categories are strings on the wire; a CSV's True or 7 becomes "True" or "7".
            series = pd.Series(given, dtype=object)
            missing = series.isna()
            text = series.map(str, na_action="ignore").astype(object)
            text[missing] = np.nan
            data[feature.name] = text
    return pd.DataFrame(data, columns=names)


@dataclass
class Predicted:
    """The model's output for a run of rows: a prediction per row (``None`` where the model
    raised on that row alone), a row of class probabilities per row for classifiers (NaN
    where it raised), and the errors by row."""

    predictions: np.ndarray
    probabilities: np.ndarray | None
    errors: dict[int, str]


class LoadedModel:
    """The fitted pipeline with its spec; predicts keyed blocks, keys kept beside each row."""

    def __init__(self, spec: ModelSpec, pipeline: Any) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.derive_predictions = _predicts_by_largest_probability(pipeline)

    @classmethod
    def load(cls, tag: str, metadata: dict[str, Any], path: str) -> LoadedModel:
        return cls(ModelSpec.from_metadata(tag, metadata), joblib.load(path))

    def predict_blocks(self, blocks: Sequence[KeyedBlock]) -> list[BlockResult]:
        """One result per block, in order, each with its block's chunk id and keys. The
        blocks are predicted as one frame: the model's cost is mostly per call."""
        names = self.spec.feature_names
        for block in blocks:
            if len(block.columns) != len(names) or any(
                len(column) != len(block.keys) for column in block.columns
            ):
                raise ValueError(
                    f"block {block.chunk[:8]} does not hold {len(names)} columns of "
                    f"{len(block.keys)} values"
                )
        columns = {
            name: np.concatenate([block.columns[i] for block in blocks])
            for i, name in enumerate(names)
        }
        predicted = self.predict_columns(columns)
        results, start = [], 0
        for block in blocks:
            end = start + len(block.keys)
            errors = [
                BlockError(
                    row=row - start,
                    error=model_error(block.keys[row - start], predicted.errors[row]),
                )
                for row in sorted(predicted.errors)
                if start <= row < end
            ]
            results.append(
                BlockResult.model_construct(
                    chunk=block.chunk,
                    keys=block.keys,
                    predictions=predicted.predictions[start:end],
                    probabilities=None
                    if predicted.probabilities is None
                    else predicted.probabilities[start:end],
                    errors=errors,
                )
            )
            start = end
        return results

    def predict_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Predicted:
        """Columns by feature name -> ``Predicted``. If the model raises on the rows, the
        ones it cannot take are found by bisection and get an error each; the others, which
        may belong to other callers, are predicted as usual."""
        frame = to_frame(columns, self.spec.features)
        n = len(frame)
        try:  # the usual case: one call for every row
            predictions, probabilities = self._predict(frame)
            return Predicted(predictions, probabilities, {})
        except Exception as exc:
            if n <= 1:
                logger.warning("model raised on one row: %s", _first_line(exc))
                return Predicted(
                    np.full(n, None, dtype=object), self._no_probabilities(n), {0: _first_line(exc)}
                )
        predictions = np.full(n, None, dtype=object)
        probabilities = self._no_probabilities(n)
        errors: dict[int, str] = {}

        def run(start: int, end: int) -> None:
            try:
                part, part_probabilities = self._predict(frame.iloc[start:end])
            except Exception as exc:
                if end - start == 1:
                    logger.warning("model raised on one row: %s", _first_line(exc))
                    errors[start] = _first_line(exc)
                    return
                middle = (start + end) // 2
                run(start, middle)
                run(middle, end)
                return
            predictions[start:end] = part
            if probabilities is not None and part_probabilities is not None:
                probabilities[start:end] = part_probabilities

        middle = n // 2
        run(0, middle)
        run(middle, n)
        return Predicted(predictions, probabilities, errors)

    def _no_probabilities(self, n: int) -> np.ndarray | None:
        if self.spec.task != "classification" or self.spec.classes is None:
            return None
        return np.full((n, len(self.spec.classes)), np.nan)

    def _predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        probabilities = None
        if self.spec.task != "classification":
            values = np.asarray(self.pipeline.predict(frame))
        else:
            proba = np.asarray(self.pipeline.predict_proba(frame), dtype=np.float64)
            if self.derive_predictions:
                # What the forest's own predict does; one pass over the trees, not two.
                values = np.asarray(self.pipeline.classes_).take(np.argmax(proba, axis=1))
            else:
                values = np.asarray(self.pipeline.predict(frame))
            # predict_proba rows sum to 1 up to float error; renormalised so that callers
            # can rely on it.
            probabilities = proba / proba.sum(axis=1, keepdims=True)
        if len(values) != len(frame):  # a pipeline that drops rows must not shift keys
            raise RuntimeError(f"model returned {len(values)} predictions for {len(frame)} rows")
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ValueError("model produced a non-finite prediction")
        return values, probabilities


def model_error(key: Any, reason: str) -> InstanceError:
    """The error a key gets when the model raised on its row alone."""
    return InstanceError(
        code="model_error",
        message=f"instance with key {key!r}: the model could not predict it: {reason}",
    )


def _predicts_by_largest_probability(pipeline: Any) -> bool:
    """True where scikit-learn defines ``predict`` as the class of largest
    ``predict_proba`` (forests and trees), so one call gives both."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    forests_and_trees = (
        RandomForestClassifier,
        ExtraTreesClassifier,
        DecisionTreeClassifier,
        ExtraTreeClassifier,
    )
    return isinstance(final, forests_and_trees)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
