"""Predicting a micro-batch: the fitted pipeline with its spec, keyed blocks in, keyed results
out; the rows a model raises on are isolated, and forests take a faster path with the same
answers. Knows nothing of HTTP or of the model store (that is :mod:`.store`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keyed_serving.lazy import numpy as np

if TYPE_CHECKING:  # pandas and joblib load with the model, in the runner only
    import pandas as pd

from keyed_serving.model.spec import ModelSpec, to_frame
from keyed_serving.schemas import (
    BlockError,
    BlockResult,
    InstanceError,
    KeyedBlock,
)

logger = logging.getLogger("keyed_serving.model")


@dataclass(frozen=True)
class IsolationBudget:
    """How far the search for the rows a model raises on may go in one micro-batch: model
    calls and seconds. Rows not told apart within it are answered with an error each."""

    max_calls: int
    max_s: float

    @classmethod
    def configured(cls) -> IsolationBudget:
        """The budget the settings name (KEYED_ISOLATION_MAX_CALLS, KEYED_ISOLATION_MAX_S)."""
        from keyed_serving.settings import get_settings

        settings = get_settings()
        return cls(settings.isolation_max_calls, settings.isolation_max_s)


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

    def __init__(
        self, spec: ModelSpec, pipeline: Any, budget: IsolationBudget | None = None
    ) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.budget = budget or IsolationBudget.configured()
        self.derive_predictions = _predicts_by_largest_probability(pipeline)
        from keyed_serving.settings import get_settings

        threads = get_settings().model_threads
        self.predict_proba = _forest_proba(pipeline, threads) if self.derive_predictions else None

    @classmethod
    def load(
        cls,
        tag: str,
        metadata: dict[str, Any],
        path: str,
        budget: IsolationBudget | None = None,
    ) -> LoadedModel:
        import joblib

        return cls(ModelSpec.from_metadata(tag, metadata), joblib.load(path), budget)

    def predict_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (and class probabilities) of a frame built by ``to_frame``, exactly
        as the runner makes them; raises where the model raises (no row isolation)."""
        return self._predict(frame)

    def predict_blocks(self, blocks: Sequence[KeyedBlock]) -> list[BlockResult]:
        """One result per block, in order, each with its block's chunk id, keys and model
        version. The blocks are predicted as one frame: the model's cost is mostly per call.
        A block for another model version is refused (see ``refused``), not predicted."""
        mine = self.own_blocks(blocks)
        predicted = self.predict_columns(self._columns(mine)) if mine else None
        return self._results(blocks, predicted)

    async def predict_blocks_async(self, blocks: Sequence[KeyedBlock]) -> list[BlockResult]:
        """``predict_blocks`` for a server's event loop: the usual single model call runs on
        the loop; the search for the rows the model raised on, rare and longer (bounded by
        the budget), runs in a thread so that the loop goes on serving meanwhile."""
        mine = self.own_blocks(blocks)
        predicted = None
        if mine:
            frame = to_frame(self._columns(mine), self.spec.features)
            try:
                predicted = self._predict_whole(frame)
            except Exception as exc:
                predicted = await asyncio.to_thread(self._isolate, frame, exc)
        return self._results(blocks, predicted)

    def own_blocks(self, blocks: Sequence[KeyedBlock]) -> list[KeyedBlock]:
        """The blocks sent for this model's version; the others are refused."""
        return [block for block in blocks if block.model == self.spec.tag]

    def predict_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Predicted:
        """Columns by feature name -> ``Predicted``. If the model raises on the rows, the
        ones it cannot take are searched for by bisection and get an error each; the others,
        which may belong to other callers, are predicted as usual."""
        frame = to_frame(columns, self.spec.features)
        try:  # the usual case: one call for every row
            return self._predict_whole(frame)
        except Exception as exc:
            return self._isolate(frame, exc)

    def _predict_whole(self, frame: pd.DataFrame) -> Predicted:
        predictions, probabilities = self._predict(frame)
        return Predicted(predictions, probabilities, {})

    def _isolate(self, frame: pd.DataFrame, first_error: Exception) -> Predicted:
        """After the model raised on ``frame``: bisect it, largest parts first, so that
        every call clears as many good rows as it can. Within the budget every row the
        model raised on alone is found; past it, the rows of the parts not yet told apart
        get an error saying so (never a silent loss)."""
        n = len(frame)
        predictions = np.full(n, None, dtype=object)
        probabilities = self._no_probabilities(n)
        errors: dict[int, str] = {}
        if n <= 1:
            logger.warning("model raised on one row: %s", _first_line(first_error))
            return Predicted(predictions, probabilities, {0: _first_line(first_error)})
        pending = collections.deque([(0, n // 2), (n // 2, n)])
        calls, started = 0, time.monotonic()
        while pending:
            if calls >= self.budget.max_calls or time.monotonic() - started >= self.budget.max_s:
                break
            start, end = pending.popleft()
            calls += 1
            try:
                part, part_probabilities = self._predict(frame.iloc[start:end])
            except Exception as exc:
                if end - start == 1:
                    logger.warning("model raised on one row: %s", _first_line(exc))
                    errors[start] = _first_line(exc)
                else:
                    middle = (start + end) // 2
                    pending.extend([(start, middle), (middle, end)])
                continue
            predictions[start:end] = part
            if probabilities is not None and part_probabilities is not None:
                probabilities[start:end] = part_probabilities
        if pending:
            rows = sum(end - start for start, end in pending)
            logger.warning(
                "model raised on a micro-batch of %d rows; %d rows not told apart within the "
                "isolation budget (%d model calls, %.1f s)",
                n,
                rows,
                calls,
                time.monotonic() - started,
            )
            reason = (
                "the model raised on a group of rows holding this one, and the rows it "
                f"cannot take were not told apart within the budget of {calls} model calls; "
                f"send it again in a smaller request ({_first_line(first_error)})"
            )
            for start, end in pending:
                errors.update(dict.fromkeys(range(start, end), reason))
        return Predicted(predictions, probabilities, errors)

    def _columns(self, blocks: Sequence[KeyedBlock]) -> dict[str, np.ndarray]:
        names = self.spec.feature_names
        for block in blocks:
            if len(block.columns) != len(names) or any(
                len(column) != len(block.keys) for column in block.columns
            ):
                raise ValueError(
                    f"block {block.chunk[:8]} does not hold {len(names)} columns of "
                    f"{len(block.keys)} values"
                )
        return {
            name: np.concatenate([block.columns[i] for block in blocks])
            for i, name in enumerate(names)
        }

    def _results(
        self, blocks: Sequence[KeyedBlock], predicted: Predicted | None
    ) -> list[BlockResult]:
        """The results of ``blocks``, whose own ones ``predicted`` holds in order."""
        results, start = [], 0
        for block in blocks:
            if block.model != self.spec.tag:
                results.append(refused(block, self.spec.tag))
                continue
            assert predicted is not None  # some block was this version's
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
                    model=self.spec.tag,
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

    def _no_probabilities(self, n: int) -> np.ndarray | None:
        if self.spec.task != "classification" or self.spec.classes is None:
            return None
        return np.full((n, len(self.spec.classes)), np.nan)

    def _predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        probabilities = None
        if self.spec.task != "classification":
            values = np.asarray(self.pipeline.predict(frame))
        else:
            predict_proba = self.predict_proba or self.pipeline.predict_proba
            raw = np.asarray(predict_proba(frame))
            proba = raw.astype(np.float64)
            if self.derive_predictions:
                # What the forest's own predict does; one pass over the trees, not two.
                values = np.asarray(self.pipeline.classes_).take(np.argmax(proba, axis=1))
            else:
                values = np.asarray(self.pipeline.predict(frame))
            probabilities = sum_to_one(proba, raw.dtype)
        if len(values) != len(frame):  # a pipeline that drops rows must not shift keys
            raise RuntimeError(f"model returned {len(values)} predictions for {len(frame)} rows")
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ValueError("model produced a non-finite prediction")
        return values, probabilities


def sum_to_one(probabilities: np.ndarray, computed_in: np.dtype[Any]) -> np.ndarray:
    """Class probabilities callers can rely on to sum to 1, up to the rounding of the type
    the model computed them in: rows within it are the model's own values, bit for bit;
    rows beyond it (a model whose scores are not probabilities) are renormalised.

    The rounding is the type's: XGBoost computes in float32, whose rows, cast to float64,
    sum to 1 only within ~1e-7 (3e-8 measured for two classes, 7e-8 for three); held to
    float64's 1e-9 they were renormalised, moved off the model's own values, and the import
    check refused every XGBoost classifier."""
    precision = np.finfo(computed_in).eps if computed_in.kind == "f" else 0.0
    tolerance = max(1e-9, probabilities.shape[1] * float(precision))
    sums = probabilities.sum(axis=1, keepdims=True)
    off = np.abs(sums - 1.0) > tolerance
    return np.where(off, probabilities / np.where(sums == 0, 1.0, sums), probabilities)


def refused(block: KeyedBlock, serving: str) -> BlockResult:
    """The answer to a block sent for another model version than the one ``serving``: no
    predictions, an error per row, and the version that refused it, which the entry checks
    before anything else (``reassemble_by_key``)."""
    reason = f"this runner serves {serving}, not {block.model}"
    return BlockResult.model_construct(
        chunk=block.chunk,
        model=serving,
        keys=block.keys,
        predictions=np.full(len(block.keys), None, dtype=object),
        probabilities=None,
        errors=[
            BlockError(row=row, error=InstanceError(code="model_version", message=reason))
            for row in range(len(block.keys))
        ],
    )


def model_error(key: Any, reason: str) -> InstanceError:
    """The error a key gets when the model raised on its row alone."""
    return InstanceError(
        code="model_error",
        message=f"instance with key {key!r}: the model could not predict it: {reason}",
    )


def _predicts_by_largest_probability(pipeline: Any) -> bool:
    """True where scikit-learn defines ``predict`` as ``classes_`` at the largest
    ``predict_proba`` (single-output forests and trees), so one call gives both. Exact
    classes only, not subclasses (which may predict otherwise), and only where the
    pipeline's classes are the final estimator's."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    if hasattr(pipeline, "steps") and type(pipeline) is not Pipeline:
        return False
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    forests_and_trees = (
        RandomForestClassifier,
        ExtraTreesClassifier,
        DecisionTreeClassifier,
        ExtraTreeClassifier,
    )
    return type(final) in forests_and_trees and getattr(final, "n_outputs_", 1) == 1


# Below this many rows a second thread costs more than it saves (measured on 2 cores: 1,000
# rows 3.4 -> 5.1 ms with two threads, 5,000 rows 8.5 -> 6.8 ms, 10,000 15.6 -> 12.8 ms).
THREADED_ROWS = 4000


def _forest_proba(pipeline: Any, threads: int = 1) -> Any:
    """A forest's ``predict_proba`` as scikit-learn computes it with ``n_jobs=1`` (zeros,
    plus each tree's probabilities in the order of ``estimators_``, divided by their
    number), without the per-tree wrapper its joblib dispatch adds: that wrapper
    (configuration, warning filters) was more than half of a small micro-batch's model time
    (bench/profile_workers.py). With ``threads`` > 1, a large batch's rows are split between
    threads (the trees release the GIL while they walk), each row still summed over the
    trees in the same order. The answers are the same, bit for bit: a test compares them
    with the pipeline's own. ``pipeline`` is one for which
    ``_predicts_by_largest_probability`` holds; a lone tree keeps its own method."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    if type(final) not in (RandomForestClassifier, ExtraTreesClassifier):
        return None
    steps = getattr(pipeline, "steps", [])
    transform = pipeline[:-1].transform if len(steps) > 1 else None
    pool = ThreadPoolExecutor(threads, thread_name_prefix="forest") if threads > 1 else None

    def averaged(rows: Any) -> np.ndarray:
        proba = np.zeros((rows.shape[0], final.n_classes_), dtype=np.float64)
        for tree in final.estimators_:
            proba += tree.predict_proba(rows, check_input=False)
        proba /= len(final.estimators_)
        return proba

    def predict_proba(frame: pd.DataFrame) -> np.ndarray:
        # The forest's own input check (float32, C order), then each tree unchecked, as the
        # forest calls them.
        rows = final._validate_X_predict(transform(frame) if transform else frame)
        if pool is None or rows.shape[0] < THREADED_ROWS:
            return averaged(rows)
        bounds = np.linspace(0, rows.shape[0], threads + 1).astype(int)
        parts = [rows[start:end] for start, end in itertools.pairwise(bounds)]
        return np.concatenate(list(pool.map(averaged, parts)))

    return predict_proba


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
