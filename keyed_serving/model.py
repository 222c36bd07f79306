"""The model stage: the fitted pipeline, what it takes, and keyed prediction of a micro-batch.

Knows nothing of HTTP. The same ``to_frame`` builds the frame at training and at serving
time, so the pipeline always sees columns of the dtypes it was fitted on.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pandas and joblib load with the model, in the runner only
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
# Ours (train.py, keyed-import): the pipeline in this file, what it takes in the metadata.
MODEL_FILE = "model.joblib"
# A model saved with plain bentoml.sklearn.save_model: no metadata of ours.
PLAIN_SKLEARN_MODULES = ("bentoml.sklearn", "_bentoml_impl.frameworks.sklearn")
# Pickles of these are portable across their minor versions; they are not guarded.
PORTABLE_PACKAGES = frozenset({"numpy"})
Task = Literal["classification", "regression"]
# Where a server's start hands the version it resolved to its workers (see served_model_tag).
PIN_VARIABLE = "KEYED_SERVED_MODEL"


def served_model_tag(requested: str) -> str:
    """The one model version a server serves: ``requested`` (``name:version`` or
    ``name:latest``) resolved once, where the server starts.

    ``bentoml serve`` imports the service in the process that spawns the workers, then each
    worker imports it again, and a respawned worker does so once more: resolving ``latest``
    in each would let a worker restarted after a new version was saved serve another version
    than its siblings. So the starting process resolves it and leaves the result in its
    environment, which circus copies to every worker it spawns, respawned ones included;
    a worker takes the version from there. A built bento holds one version of the model,
    and in-process (``to_asgi()``, tests) the one process resolves it once.

    A model not in the local store is left as asked for: BentoML pulls or refuses it."""
    import bentoml
    from bentoml._internal.context import server_context
    from bentoml.exceptions import NotFound

    if server_context.worker_index is not None:  # a worker of `bentoml serve`
        pinned = _pinned(requested)
        if pinned is not None:
            return pinned
    try:
        resolved = str(bentoml.models.get(requested).tag)
    except NotFound:
        os.environ.pop(PIN_VARIABLE, None)  # never hand down a pin made for another start
        return requested
    os.environ[PIN_VARIABLE] = json.dumps({"requested": requested, "tag": resolved})
    return resolved


def _pinned(requested: str) -> str | None:
    try:
        pin = json.loads(os.environ.get(PIN_VARIABLE, ""))
    except ValueError:
        return None
    if not isinstance(pin, dict) or pin.get("requested") != requested:
        return None  # made for another MODEL_TAG
    tag = pin.get("tag")
    return tag if isinstance(tag, str) else None


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


@dataclass(frozen=True)
class ModelSpec:
    """What a model takes and gives, from its BentoML metadata (no unpickling needed)."""

    tag: str
    task: Task
    target: str | None
    features: tuple[FeatureInfo, ...]
    classes: tuple[Any, ...] | None
    holdout_score: Score | None

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

    @classmethod
    def load(cls, tag: str) -> ModelSpec:
        """From the model store: for our models from the metadata alone (the pipeline is
        not unpickled), for a plain bentoml.sklearn model from the estimator."""
        import bentoml

        return spec_of(bentoml.models.get(tag))

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
        values = np.vstack([np.asarray(columns[n], dtype=np.float64) for n in names])
        return pd.DataFrame(values.T, columns=names, copy=False)
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
            proba = np.asarray(predict_proba(frame), dtype=np.float64)
            if self.derive_predictions:
                # What the forest's own predict does; one pass over the trees, not two.
                values = np.asarray(self.pipeline.classes_).take(np.argmax(proba, axis=1))
            else:
                values = np.asarray(self.pipeline.predict(frame))
            # Rows that do not sum to 1 beyond float error are renormalised so that callers
            # can rely on it; the others are the model's own values, bit for bit.
            sums = proba.sum(axis=1, keepdims=True)
            off = np.abs(sums - 1.0) > 1e-9
            probabilities = np.where(off, proba / np.where(sums == 0, 1.0, sums), proba)
        if len(values) != len(frame):  # a pipeline that drops rows must not shift keys
            raise RuntimeError(f"model returned {len(values)} predictions for {len(frame)} rows")
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise ValueError("model produced a non-finite prediction")
        return values, probabilities


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
    (bench/profile.py). With ``threads`` > 1, a large batch's rows are split between
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


# ---- loading any kind of stored model -------------------------------------------------


class ModelRefused(RuntimeError):
    """A stored model this environment cannot serve; the message says why and what to do."""


def is_ours(metadata: Mapping[str, Any]) -> bool:
    """Saved by train.py or keyed-import: the pipeline in MODEL_FILE, its spec in metadata."""
    return "features" in metadata and "task" in metadata


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


def recorded_packages(stored: Any) -> dict[str, str]:
    """The packages (distribution name -> version) the stored model was pickled with."""
    metadata = stored.info.metadata
    if "packages" in metadata:  # keyed-import
        return dict(metadata["packages"])
    if "sklearn_version" in metadata:  # train.py
        return {"scikit-learn": metadata["sklearn_version"]}
    return dict(stored.info.context.framework_versions or {})  # bentoml.sklearn


def version_problems(packages: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(packages missing here, packages whose major.minor differs here), as sentences."""
    missing, differing = [], []
    for name, saved in sorted(packages.items()):
        if name in PORTABLE_PACKAGES:
            continue
        try:
            here = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name} {saved} is not installed")
            continue
        if _major_minor(here) != _major_minor(saved):
            differing.append(f"{name} {saved} (this environment has {here})")
    return missing, differing


def check_versions(stored: Any, allow_mismatch: bool | None = None) -> None:
    """Refuse a model pickled with another major.minor version of scikit-learn (or of
    another package its fitted object holds) than this environment's: pickles are not
    portable across them. KEYED_ALLOW_VERSION_MISMATCH=1 turns the refusal into a warning;
    a package that is not installed at all is always refused."""
    if allow_mismatch is None:
        from keyed_serving.settings import get_settings

        allow_mismatch = get_settings().allow_version_mismatch
    missing, differing = version_problems(recorded_packages(stored))
    if missing:
        raise ModelRefused(
            f"model {stored.tag} needs packages this environment lacks: {'; '.join(missing)}. "
            "Install them (for LightGBM or XGBoost: pip install -e '.[lightgbm]' or "
            "'.[xgboost]')."
        )
    if not differing:
        return
    said = (
        f"model {stored.tag} was saved with {', '.join(differing)}: pickled models are not "
        "portable across major.minor versions"
    )
    if allow_mismatch:
        logger.warning("%s; serving it anyway (KEYED_ALLOW_VERSION_MISMATCH)", said)
        return
    raise ModelRefused(
        f"{said}. Serve it where those versions are installed, import the model again "
        "(keyed-import) in this environment, or set KEYED_ALLOW_VERSION_MISMATCH=1 to serve "
        "it anyway."
    )


def load_stored(stored: Any, budget: IsolationBudget | None = None) -> LoadedModel:
    """Any model the service serves, from the model store (``bentoml.models.get(tag)`` or a
    service's ``BentoModel``): one trained by train.py, one imported by keyed-import, or a
    plain ``bentoml.sklearn`` model. Refuses (``ModelRefused``) what it cannot serve."""
    check_versions(stored)
    tag = str(stored.tag)
    metadata = stored.info.metadata
    if is_ours(metadata):
        return LoadedModel.load(tag, metadata, stored.path_of(MODEL_FILE), budget)
    if stored.info.module in PLAIN_SKLEARN_MODULES:
        import bentoml

        estimator = bentoml.sklearn.load_model(stored)
        return LoadedModel(ModelSpec.from_estimator(tag, estimator), estimator, budget)
    raise ModelRefused(
        f"model {tag} was saved with {stored.info.module or 'bentoml.models.create'} and has "
        "no metadata of ours: this service serves models trained by train.py, imported with "
        "keyed-import, or saved with bentoml.sklearn.save_model"
    )


def check_servable(tag: str) -> None:
    """Refuse, where a server starts, a model it could not serve (``ModelRefused``): a
    worker that raises in its ``__init__`` is respawned by ``bentoml serve`` over and over
    and the server never exits (measured), while an error on importing the service stops
    it at once with the message. A model not in the local store is left to BentoML."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        return
    spec_of(stored)


def spec_of(stored: Any) -> ModelSpec:
    """What a stored model takes and gives. Ours: from the metadata, nothing unpickled. A
    plain bentoml.sklearn model: from the estimator, loaded once per process."""
    check_versions(stored)
    if is_ours(stored.info.metadata):
        return ModelSpec.from_metadata(str(stored.tag), stored.info.metadata)
    tag = str(stored.tag)
    if tag not in _plain_specs:  # a version's spec never changes: unpickle it once
        _plain_specs[tag] = load_stored(stored).spec
    return _plain_specs[tag]


_plain_specs: dict[str, ModelSpec] = {}


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])
