"""Import a fitted model someone already has: what it takes is read from a sample of the
rows it takes, it is checked to predict that sample through the runner's own code exactly
as it predicts it itself, and it is stored in the layout the service serves.

keyed-import MODEL_FILE --sample TABLE --name NAME [--key COL] [--target COL]
             [--task classification|regression]

MODEL_FILE: a joblib or pickle file holding a fitted scikit-learn-API estimator or
Pipeline, or an MLflow model directory with the sklearn flavor (whose signature, where it
names the inputs, makes --sample optional). TABLE: CSV, Parquet or JSON Lines. Prints the
tag; exit 2 (nothing stored) when the model is refused.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import pickle
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keyed_serving.model.fitted_types import (
    as_taken,
    as_the_model_takes,
    fitted_types,
    is_boolean_column,
)
from keyed_serving.model.import_check import check_sample, first_line, sample_score
from keyed_serving.model.spec import (
    ImportRefused,
    Task,
    class_labels,
    estimator_task,
    prediction_type_of,
)
from keyed_serving.model.store import MODEL_FILE
from keyed_serving.schemas import FeatureInfo, Score

# Libraries that store other feature names than they were fitted with: the sample's
# column names are matched as the library rewrites them. LightGBM replaces spaces with
# underscores (and refuses JSON's special characters outright).
NAME_REWRITES: dict[str, Callable[[str], str]] = {
    "lightgbm": lambda name: name.replace(" ", "_"),
}
# MLflow signature column types, as the features the service takes.
MLFLOW_NUMBERS = {"double", "float", "long", "integer"}
MLFLOW_CATEGORIES = {"string"}


@dataclass(frozen=True)
class Imported:
    tag: str
    task: Task
    features: int
    checked_rows: int
    score: Score | None


def save_model(
    name: str,
    model: Any,
    sample: pd.DataFrame | str | Path | None,
    *,
    key: str | None = None,
    target: str | None = None,
    task: Task | None = None,
) -> str:
    """Store ``model`` (a fitted estimator or Pipeline, or the path of a joblib / pickle
    file or MLflow model directory) so that the service serves it; its tag.

    ``sample``: rows the model takes (a DataFrame, or a CSV / Parquet / JSON Lines file),
    whose columns other than ``key`` and ``target`` are the features. Raises
    ``ImportRefused`` when the model does not predict the sample through the runner's code
    exactly as it does itself; nothing is stored then."""
    return import_model(name, model, sample, key=key, target=target, task=task).tag


def import_model(
    name: str,
    model: Any,
    sample: pd.DataFrame | str | Path | None,
    *,
    key: str | None = None,
    target: str | None = None,
    task: Task | None = None,
) -> Imported:
    import bentoml
    import joblib

    from keyed_serving.tables import read_table

    source, signature = "python object", None
    if isinstance(model, str | Path):
        source = Path(model).name
        model, signature = read_model(Path(model))
    if not callable(getattr(model, "predict", None)):
        raise ImportRefused(f"{type(model).__name__} has no predict method")
    refuse_multi_output(model, _declared_outputs(model))
    task = task or estimator_task(model)
    if task == "classification" and not (
        callable(getattr(model, "predict_proba", None)) and hasattr(model, "classes_")
    ):
        raise ImportRefused(
            f"{type(model).__name__} has no predict_proba and classes_, which a classifier "
            "needs; pass --task regression to serve its predict alone"
        )
    classes = class_labels(model) if task == "classification" else None
    if classes is not None and not all(isinstance(c, str | int | float | bool) for c in classes):
        raise ImportRefused(f"class labels must be strings or numbers, got {classes[:5]}")

    table = None
    if sample is not None:
        table = sample if isinstance(sample, pd.DataFrame) else read_table(sample, key or ())
    score: Score | None = None
    if table is None:
        if signature is None:
            raise ImportRefused(
                "a sample of the rows the model takes is needed (--sample): the model "
                "names no inputs with their types"
            )
        names = match_features(model, [f.name for f in signature])
        by_name = {f.name: f for f in signature}
        features = [by_name[n] for n in names]
        checked = 0
        predictions = None
    else:
        for role, column in (("key", key), ("target", target)):
            if column is not None and column not in table.columns:
                raise ImportRefused(
                    f"the sample has no {role} column {column!r}; it has {list(table.columns)}"
                )
        if len(table) == 0:
            raise ImportRefused("the sample has no rows")
        names = match_features(model, [str(c) for c in table.columns if c not in (key, target)])
        from keyed_serving.model.training import describe_features

        # A feature's type is what the fitted model takes where it says (an encoder's
        # categories, XGBoost's and LightGBM's feature types); the sample's dtype otherwise.
        taken = fitted_types(model, names)
        if isinstance(sample, str | Path):
            texts = [name for name, feature in taken.items() if feature.type == "category"]
            table = read_as_written(sample, key, table, texts)
        features = [
            as_the_model_takes(described, taken.get(described.name))
            for described in describe_features(table[names])
        ]
        # The model's own answers are compared on the sample read as the model takes it:
        # a column it knows as text ("True") is text, a native categorical its fitted dtype.
        table = as_taken(table, [f for f in features if f.name in taken])
        try:
            predictions = check_sample(task, target, features, classes, model, table)
        except ImportRefused as as_categories:
            # A boolean column the model does not type is a category ("True"/"False")
            # unless the model takes it as a number (sklearn's passthrough): then it is
            # served as 1.0/0.0.
            flags = {
                f.name for f in features if f.name not in taken and is_boolean_column(table[f.name])
            }
            if not flags:
                raise
            features = [
                FeatureInfo(name=f.name, type="number") if f.name in flags else f for f in features
            ]
            try:
                predictions = check_sample(task, target, features, classes, model, table)
            except ImportRefused:
                raise ImportRefused(
                    f"{as_categories} (and with boolean columns {sorted(flags)} as numbers)"
                ) from None
        checked = len(table)
        refuse_multi_output(model, predictions.shape[1] if predictions.ndim > 1 else None)
        if target is not None:
            score = sample_score(task, table[target], predictions)
    # Checked after the model's answers so that a refusal says first what it would answer.
    packages = packages_of(model)

    metadata: dict[str, Any] = {
        "task": task,
        "target": target,
        "key_column": key,
        "features": [f.model_dump(exclude_none=True) for f in features],
        "classes": list(classes) if classes is not None else None,
        "holdout_score": score.model_dump() if score is not None else None,
        "prediction_type": predicted_labels_type(task, model, predictions),
        "imported": True,
        "source": source,
        "sample": Path(sample).name if isinstance(sample, str | Path) else None,
        "sample_rows": checked,
        "packages": packages,
        "sklearn_version": packages["scikit-learn"],
    }
    # BentoML's metadata takes no None values: leave absent what does not apply.
    metadata = {k: v for k, v in metadata.items() if v is not None}
    with bentoml.models.create(name, metadata=metadata) as ref:
        joblib.dump(model, ref.path_of(MODEL_FILE))
    return Imported(str(ref.tag), task, len(features), checked, score)


def read_model(path: Path) -> tuple[Any, list[FeatureInfo] | None]:
    """The fitted object in a joblib / pickle file or an MLflow model directory, and the
    features an MLflow signature names (None where it names none)."""
    if path.is_dir():
        if not (path / "MLmodel").exists():
            raise ImportRefused(f"{path} is a directory without an MLmodel file")
        return read_mlflow(path)
    if not path.exists():
        raise ImportRefused(f"{path}: no such file")
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    from keyed_serving.settings import get_settings

    with warnings.catch_warnings():
        if not get_settings().allow_version_mismatch:
            warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            return joblib.load(path), None  # joblib reads plain pickles too
        except InconsistentVersionWarning as exc:
            raise ImportRefused(
                f"{path} was pickled with scikit-learn {exc.original_sklearn_version}, this "
                f"environment has {exc.current_sklearn_version}: import it where that version "
                "is installed (or set KEYED_ALLOW_VERSION_MISMATCH=1 to take it anyway)"
            ) from None
        except Exception as exc:
            raise ImportRefused(f"{path}: cannot load it with joblib or pickle: {exc}") from exc


def read_mlflow(path: Path) -> tuple[Any, list[FeatureInfo] | None]:
    try:
        import mlflow.sklearn
        from mlflow.models import Model
    except ImportError:
        raise ImportRefused(
            "reading an MLflow model needs mlflow: pip install -e '.[mlflow]'"
        ) from None
    described = Model.load(str(path))
    if "sklearn" not in described.flavors:
        raise ImportRefused(
            f"{path} has no sklearn flavor (it has {sorted(described.flavors)}); only "
            "scikit-learn-API models are served"
        )
    model = mlflow.sklearn.load_model(str(path))
    inputs = described.signature.inputs if described.signature is not None else None
    if inputs is None or not inputs.has_input_names():
        return model, None
    features = []
    for column in inputs.inputs:
        kind = getattr(column.type, "name", str(column.type))
        if kind in MLFLOW_NUMBERS:
            features.append(FeatureInfo(name=column.name, type="number"))
        elif kind in MLFLOW_CATEGORIES:
            features.append(FeatureInfo(name=column.name, type="category"))
        else:  # a sample says what such a column holds
            return model, None
    return model, features


def match_features(model: Any, columns: Sequence[str]) -> list[str]:
    """The sample's feature columns in the model's order, where the model knows the names
    it was fitted with (``feature_names_in_``), matched as its library matches them;
    the sample's own order otherwise. Refuses missing and extra columns by name."""
    fitted = getattr(model, "feature_names_in_", None)
    if not columns:
        raise ImportRefused("the sample has no feature columns besides the key and target")
    if fitted is None:
        return list(columns)
    rewrite = NAME_REWRITES.get(_library_of_first_step(model), lambda name: name)
    matched: dict[str, str] = {}
    for name in (str(n) for n in fitted):
        found = name if name in columns else next((c for c in columns if rewrite(c) == name), None)
        if found is not None:
            matched[name] = found
    missing = [str(n) for n in fitted if str(n) not in matched]
    extra = [c for c in columns if c not in matched.values()]
    if missing or extra:
        raise ImportRefused(
            "the sample's columns do not match the features the model was fitted with: "
            f"missing {missing}, extra {extra} (name the key and target columns with --key "
            "and --target; they are not features)"
        )
    return [matched[str(n)] for n in fitted]


def read_as_written(
    path: str | Path, key: str | None, table: pd.DataFrame, texts: Sequence[str]
) -> pd.DataFrame:
    """A file sample with the columns the model takes as text read again as the text
    written, as keyed-score and /predict_file read them to score (a CSV's ``02134`` is the
    category "02134", not the number 2134; ``10001`` beside a gap is not "10001.0")."""
    from keyed_serving.tables import feature_values, read_table

    if not texts:
        return table
    again = read_table(path, key or (), exact=texts)
    written = {
        name: pd.Series(feature_values(again[name].tolist(), "category"), dtype=object)
        .fillna(np.nan)
        .to_numpy()
        for name in texts
    }
    return table.assign(**written)


def refuse_multi_output(model: Any, outputs: int | None) -> None:
    """Refuses a model that predicts ``outputs`` values per row (its ``predict`` answers
    [N, outputs]): the service answers one prediction per key, on every route."""
    if outputs is None:
        return
    name = type(model).__name__
    if outputs == 1:
        raise ImportRefused(
            f"{name} predicts an [N, 1] column rather than one value per row (it was fitted "
            "on a 2-D target of one column): refit it on a 1-D target (the column as a "
            "Series, or y.ravel()) and import it again"
        )
    raise ImportRefused(
        f"{name} is a multi-output model: it predicts {outputs} values per row, and the "
        "service answers one prediction per key. Serve one model per output: fit one model "
        "per target column (a MultiOutputRegressor's or MultiOutputClassifier's estimators_ "
        "are those models), and import each with keyed-import"
    )


def _declared_outputs(model: Any) -> int | None:
    """How many values per row the fitted model says it predicts, where it says so: known
    multi-output wrappers, a multi-output classifier's list of ``classes_``, a regressor's
    ``n_outputs_`` or 2-D ``coef_``. None where it does not say (its sample tells)."""
    from sklearn.base import is_classifier
    from sklearn.multioutput import (
        ClassifierChain,
        MultiOutputClassifier,
        MultiOutputRegressor,
        RegressorChain,
    )

    final = model
    while hasattr(final, "steps"):
        final = final.steps[-1][1]
    wrappers = (MultiOutputClassifier, MultiOutputRegressor, ClassifierChain, RegressorChain)
    if isinstance(final, wrappers) and hasattr(final, "estimators_"):
        return len(final.estimators_)
    classes = getattr(final, "classes_", None)
    if isinstance(classes, list):
        return len(classes)
    if is_classifier(final):
        return None  # a classifier's n_outputs_ and coef_ may count classes, not outputs
    outputs = getattr(final, "n_outputs_", None)
    if isinstance(outputs, int) and outputs > 1:
        return outputs
    coef = getattr(final, "coef_", None)
    if isinstance(coef, np.ndarray) and coef.ndim == 2 and coef.shape[0] > 1:
        return int(coef.shape[0])
    return None


def predicted_labels_type(task: Task, model: Any, predictions: np.ndarray | None) -> str | None:
    """For a model served by ``predict`` alone (regression), what its predictions are when
    they are not numbers (an SVC's labels: text, integers, booleans), from its sample's
    predictions or else its ``classes_``; None otherwise (numbers, or a classifier, whose
    labels say it)."""
    if task != "regression":
        return None
    if predictions is not None:
        kind = prediction_type_of(predictions)
    elif hasattr(model, "classes_"):
        kind = prediction_type_of(class_labels(model))
    else:
        return None
    return None if kind == "number" else kind


def packages_of(model: Any) -> dict[str, str]:
    """The installed versions of scikit-learn and of every package whose classes or
    functions the fitted object holds (LightGBM, XGBoost, ...): what must be installed, at
    the same major.minor, to unpickle it. Refuses classes defined in ``__main__``, which
    no server can import."""
    modules: set[str] = set()

    class Scanner(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            owner = obj if isinstance(obj, type) or callable(obj) else type(obj)
            module = getattr(owner, "__module__", None) or type(obj).__module__
            modules.add(module)
            return NotImplemented

    try:
        Scanner(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(model)
    except Exception as exc:
        raise ImportRefused(f"the model cannot be pickled: {first_line(exc)}") from exc
    if "__main__" in modules:
        raise ImportRefused(
            "the model holds a class or function defined in __main__ (a script or notebook), "
            "which the server cannot import: define it in a module the server can import"
        )
    distributions = importlib.metadata.packages_distributions()
    packages = {"scikit-learn": importlib.metadata.version("scikit-learn")}
    tops = sorted({m.split(".")[0] for m in modules} - set(sys.stdlib_module_names))
    refuse_local_modules([top for top in tops if top not in distributions])
    for top in tops:
        for distribution in distributions.get(top, []):
            packages[distribution] = importlib.metadata.version(distribution)
    return packages


def refuse_local_modules(tops: Sequence[str]) -> None:
    """Refuses modules the pickle needs that no installed package provides (a
    ``myfeatures.py`` beside the script, a folder on ``sys.path``): importable here, but
    the server installs packages, not folders, and would fail to load the model."""
    local = [top for top in tops if not top.startswith("_cython_")]  # Cython's own types
    if not local:
        return
    where = [
        f"{top} ({getattr(sys.modules.get(top), '__file__', None) or 'not imported here'})"
        for top in local
    ]
    raise ImportRefused(
        f"the model needs module(s) {', '.join(where)}, which are not part of an installed "
        "package: they import here, but a server installs packages, so it could not load "
        "the model. Put that code in an installed package (a pyproject.toml beside it, "
        "then pip install it here and where the model is served)"
    )


def _library_of_first_step(model: Any) -> str:
    """The library of the estimator whose ``feature_names_in_`` a (nested) Pipeline shows."""
    first = model
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    return type(first).__module__.split(".")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="keyed-import", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("model_file", metavar="MODEL_FILE")
    parser.add_argument("--sample", help="rows the model takes: CSV, Parquet or JSON Lines")
    parser.add_argument("--name", required=True, help="the model's name in the store")
    parser.add_argument("--key", help="the sample's key column; not a feature")
    parser.add_argument("--target", help="the sample's target column; scored, not a feature")
    parser.add_argument("--task", choices=["classification", "regression"])
    args = parser.parse_args(argv)
    try:
        imported = import_model(
            args.name,
            Path(args.model_file),
            args.sample,
            key=args.key,
            target=args.target,
            task=args.task,
        )
    except (ImportRefused, ValueError) as exc:
        print(f"keyed-import: refused, nothing stored: {exc}", file=sys.stderr)
        return 2
    said = (
        f"checked on {imported.checked_rows} sample rows"
        if imported.checked_rows
        else "not checked: no sample"
    )
    if imported.score is not None:
        said += f"; {imported.score.metric}: {imported.score.value:.4f}"
    print(f"saved {imported.tag} ({imported.task}, {imported.features} features, {said})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
