"""The model store: which model version a server serves, and finding, checking and loading a
stored model of any kind (trained by train.py, imported by keyed-import, or saved with plain
``bentoml.sklearn``). Knows nothing of HTTP.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from keyed_serving.model.predicting import IsolationBudget, LoadedModel
from keyed_serving.model.spec import ModelRefused, ModelSpec

logger = logging.getLogger("keyed_serving.model")
# Ours (train.py, keyed-import): the pipeline in this file, what it takes in the metadata.
MODEL_FILE = "model.joblib"
# A model saved with plain bentoml.sklearn.save_model: no metadata of ours.
PLAIN_SKLEARN_MODULES = ("bentoml.sklearn", "_bentoml_impl.frameworks.sklearn")
# Pickles of these are portable across their minor versions; they are not guarded.
PORTABLE_PACKAGES = frozenset({"numpy"})
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


def is_ours(metadata: Mapping[str, Any]) -> bool:
    """Saved by train.py or keyed-import: the pipeline in MODEL_FILE, its spec in metadata."""
    return "features" in metadata and "task" in metadata


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


def load_spec(tag: str) -> ModelSpec:
    """From the model store: for our models from the metadata alone (the pipeline is
    not unpickled), for a plain bentoml.sklearn model from the estimator."""
    import bentoml

    return spec_of(bentoml.models.get(tag))


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])
