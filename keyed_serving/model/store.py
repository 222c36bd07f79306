"""The model store: which model version a server serves, and finding, checking and loading a
stored model of any kind (trained by train.py, imported by keyed-import, or saved with plain
``bentoml.sklearn``). Knows nothing of HTTP.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bentoml.exceptions import BentoMLException

from keyed_serving.model.predicting import IsolationBudget, LoadedModel
from keyed_serving.model.spec import ModelRefused, ModelSpec
from keyed_serving.settings import DEFAULT_MODEL_TAG

logger = logging.getLogger("keyed_serving.model")
# Ours (train.py, keyed-import): the pipeline in this file, what it takes in the metadata.
MODEL_FILE = "model.joblib"
# A model saved with plain bentoml.sklearn.save_model: no metadata of ours.
PLAIN_SKLEARN_MODULES = ("bentoml.sklearn", "_bentoml_impl.frameworks.sklearn")
# Pickles of these are portable across their minor versions; they are not guarded.
PORTABLE_PACKAGES = frozenset({"numpy"})
# The project's extras that install a package a model may need.
EXTRAS = {"lightgbm": "lightgbm", "xgboost": "xgboost", "mlflow-skinny": "mlflow"}
# Where a server's start hands the version it resolved to its workers (see served_model_tag).
PIN_VARIABLE = "KEYED_SERVED_MODEL"
# Where a server's start tells its workers that the model loads without pyarrow ("1") or
# needs it ("0"); see without_pyarrow.
PYARROW_VARIABLE = "KEYED_MODEL_WITHOUT_PYARROW"


class ModelNotServable(ModelRefused, BentoMLException):
    """The model a server was to serve, refused where it starts. A BentoML error, which
    ``bentoml serve`` and ``bentoml build`` print as one line (``Error: [serve] `serve`
    failed: ...``) before they exit 1, rather than a traceback."""

    def __init__(self, message: str) -> None:
        BentoMLException.__init__(self, message)


def served_model_tag(requested: str | None, source: Path | None = None) -> str:
    """The one model version a server serves, resolved once, where the server starts.

    ``requested``: MODEL_TAG (``name:version`` or ``name:latest``), None when unset.
    ``source``: the directory the service's code was loaded from. When that is a bento's
    (``bentoml serve <bento>``, a container), the bento serves the model it carries: with
    MODEL_TAG unset, or set to that model (``name``, ``name:latest`` or its exact version);
    any other MODEL_TAG is refused (``ModelNotServable``), since the bento would serve another
    model on every machine that happens to hold it and fail on the others. Elsewhere (a
    checkout) MODEL_TAG, or DEFAULT_MODEL_TAG when unset.

    ``bentoml serve`` imports the service in the process that spawns the workers, then each
    worker imports it again, and a respawned worker does so once more: resolving ``latest``
    in each would let a worker restarted after a new version was saved serve another version
    than its siblings. So the starting process resolves it and leaves the result in its
    environment, which circus copies to every worker it spawns, respawned ones included;
    a worker takes the version from there. In-process (``to_asgi()``, tests) the one
    process resolves it once.

    A model not in the local store is left as asked for (``check_servable`` refuses it)."""
    import bentoml
    from bentoml._internal.context import server_context
    from bentoml.exceptions import NotFound

    requested = requested or None
    if server_context.worker_index is not None:  # a worker of `bentoml serve`
        pinned = _pinned(requested)
        if pinned is not None:
            return pinned
    carried = carried_models(source) if source is not None else []
    tag = _carried_one(requested, carried) if carried else requested or DEFAULT_MODEL_TAG
    try:
        resolved = str(bentoml.models.get(tag).tag)
    except NotFound:
        os.environ.pop(PIN_VARIABLE, None)  # never hand down a pin made for another start
        return tag
    os.environ[PIN_VARIABLE] = json.dumps({"requested": requested, "tag": resolved})
    return resolved


def carried_models(source: Path) -> list[str]:
    """The model versions (``name:version``) a bento carries, when ``source`` is its code
    (``<bento>/src``, beside ``<bento>/bento.yaml``); [] for a checkout. Read from the
    bento's own description, so any bento of this service is covered, however built."""
    import yaml
    from bentoml._internal.bento.bento import BENTO_PROJECT_DIR_NAME, BENTO_YAML_FILENAME

    described = source.parent / BENTO_YAML_FILENAME
    if source.name != BENTO_PROJECT_DIR_NAME or not described.is_file():
        return []

    info = yaml.safe_load(described.read_text()) or {}
    listed = [*(info.get("models") or [])]
    for service in info.get("services") or []:
        listed.extend(service.get("models") or [])
    tags = []
    for model in listed:
        tag = str(model.get("tag", "")) if isinstance(model, dict) else ""
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def _carried_one(requested: str | None, carried: list[str]) -> str:
    if requested is None:
        if len(carried) == 1:
            return carried[0]
        raise ModelNotServable(
            f"this bento carries {len(carried)} models ({', '.join(carried)}): set MODEL_TAG "
            "to the one to serve"
        )
    name, _, version = requested.partition(":")
    for tag in carried:
        if tag.partition(":")[0] == name and version in ("", "latest", tag.partition(":")[2]):
            return tag
    raise ModelNotServable(
        f"MODEL_TAG={requested} names a model this bento does not carry (it carries "
        f"{', '.join(carried)}): unset MODEL_TAG to serve what it carries, or build a bento "
        f"for that model (make build MODEL_TAG={requested})"
    )


def _pinned(requested: str | None) -> str | None:
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
    packages = recorded_packages(stored)
    missing, differing = version_problems(packages)
    if missing:
        extras = sorted({EXTRAS[n] for n in packages if n in EXTRAS and not _installed(n)})
        how = " or ".join(f"pip install -e '.[{extra}]'" for extra in extras)
        raise ModelRefused(
            f"model {stored.tag} needs packages this environment lacks: {'; '.join(missing)}. "
            f"Install them{f' ({how})' if how else ''}."
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
    with without_pyarrow(os.environ.get(PYARROW_VARIABLE) == "1"):
        return _load_stored(stored, budget)


@contextlib.contextmanager
def without_pyarrow(hide: bool) -> Iterator[None]:
    """pandas 3 imports pyarrow whenever it is installed (``pandas.compat.pyarrow``), for a
    string storage the runner never uses: its frames are float64 and object columns
    (``spec.to_frame``). Its libraries cost the runner worker about 60 MB of RSS (measured,
    bench/memory_profile.md). With ``hide``, pandas imported here finds no pyarrow and keeps
    strings in Python objects. Only where the server's start found the model loads that way
    (``load_apart``): a pipeline holding a pyarrow-backed pandas object (a ColumnTransformer
    given ``frame.columns``, say) needs it. Nothing changes once pandas or pyarrow is
    imported (a test process, the file routes), and later imports of pyarrow still work."""
    if not hide or "pandas" in sys.modules or "pyarrow" in sys.modules:
        yield
        return
    sys.modules["pyarrow"] = None  # type: ignore[assignment]  # `import pyarrow` fails
    try:
        yield
    finally:
        if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
            del sys.modules["pyarrow"]


def _load_stored(stored: Any, budget: IsolationBudget | None) -> LoadedModel:
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
    """Refuse (``ModelNotServable``), where a server starts, a model it could not serve: one
    not in the model store, one pickled with other package versions, one that does not
    unpickle here (a module it needs is missing, say). A worker that raises in its
    ``__init__`` is respawned by ``bentoml serve`` over and over and the server never exits
    (measured: ~250 times in 30 s), while an error on importing the service stops it at
    once, with its message on one line (``Error: [serve] `serve` failed: ...``).

    The model is unpickled in a short-lived process of its own (``load_apart``): the process
    that spawns the workers never holds a copy of it. A worker checks only that the model is
    there; it loads the model anyway."""
    import bentoml
    from bentoml._internal.context import server_context
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise ModelNotServable(
            f"model {tag} is not in the model store ({_store_path()}): train or import it "
            "there (make train, keyed-import), or set MODEL_TAG to a stored one "
            "(bentoml models list)"
        ) from None
    try:
        spec_of(stored)
        if server_context.worker_index is None:
            load_apart(stored)
    except ModelRefused as exc:
        raise ModelNotServable(str(exc)) from None


def load_apart(stored: Any) -> None:
    """Unpickle ``stored`` in a child process that finds modules where a worker would (this
    process's working directory first, as ``bentoml serve`` puts it on a worker's path):
    ``ModelRefused`` with the child's reason when it cannot. Costs each start the child's
    run (about 2.5 s of CPU for the iris forest: Python, pandas, scikit-learn, BentoML, the
    pickle), never memory here: the parent's RSS stayed at 93 MB (measured).

    The child first loads it without pyarrow (``without_pyarrow``); when that fails, once
    more with it. Which one worked is left in this process's environment
    (``PYARROW_VARIABLE``) for the workers it spawns, as ``served_model_tag`` leaves the
    version."""
    os.environ.pop(PYARROW_VARIABLE, None)  # never hand down what another start found
    for hide in ("1", "0"):
        out = _load_in_child(stored, hide)
        if out.returncode == 0:
            os.environ[PYARROW_VARIABLE] = hide
            return
    said = [line for line in out.stdout.splitlines() if line.startswith(_REASON)]
    reason = said[-1].removeprefix(_REASON) if said else _last_line(out.stderr, out.returncode)
    raise ModelRefused(f"model {stored.tag} cannot be loaded: {reason}")


def _load_in_child(stored: Any, hide_pyarrow: str) -> subprocess.CompletedProcess[str]:
    package_root = str(Path(__file__).resolve().parents[2])
    path = [os.getcwd(), package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    store = Path(stored.path).parent.parent
    return subprocess.run(
        [sys.executable, "-c", _LOAD_APART, str(store), str(stored.tag)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path), PYARROW_VARIABLE: hide_pyarrow},
        capture_output=True,
        text=True,
        check=False,
    )


# The child of load_apart: loads with the code a runner worker loads with.
_LOAD_APART = (
    "import sys; from keyed_serving.model.store import _load_here; _load_here(*sys.argv[1:])"
)
_REASON = "model cannot be loaded: "


def _load_here(store: str, tag: str) -> None:
    from bentoml._internal.models.model import ModelStore

    try:
        load_stored(ModelStore(store).get(tag))
    except Exception as exc:  # any reason at all: it is reported, on one line
        print(_REASON + " ".join(f"{type(exc).__name__}: {exc}".split()), flush=True)
        sys.exit(1)


def _last_line(text: str, returncode: int) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"the process that loaded it ended with {returncode}"


def _store_path() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(getattr(BentoMLContainer.model_store.get(), "_path", "BENTOML_HOME/models"))


def spec_of(stored: Any) -> ModelSpec:
    """What a stored model takes and gives. Ours: from the metadata, nothing unpickled. A
    plain bentoml.sklearn model: from the estimator, loaded once per process."""
    check_versions(stored)
    if is_ours(stored.info.metadata):
        return ModelSpec.from_metadata(str(stored.tag), stored.info.metadata)
    tag = str(stored.tag)
    if tag not in _plain_specs:  # a version's spec never changes: unpickle it once
        # pyarrow left as it is: this is the entry (or the server's start), whose file routes
        # read and write tables with it.
        _plain_specs[tag] = _load_stored(stored, None).spec
    return _plain_specs[tag]


_plain_specs: dict[str, ModelSpec] = {}


def load_spec(tag: str) -> ModelSpec:
    """From the model store: for our models from the metadata alone (the pipeline is
    not unpickled), for a plain bentoml.sklearn model from the estimator."""
    import bentoml

    return spec_of(bentoml.models.get(tag))


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])
