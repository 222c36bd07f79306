"""Test set-up: a private BentoML home for the whole session, and the trained models.

The environment is set at import time, before any test module imports bentoml, so that
nothing a test does touches the developer's own model store. Helpers live in support.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="keyed-tests-bentoml-")
os.environ["BENTOML_HOME"] = _HOME
# Hypothesis keeps its examples and caches there too, not in the checkout (.hypothesis/):
# tests write only to their temporary directories. A failure prints its example.
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(_HOME, "hypothesis")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
os.environ.pop("MODEL_TAG", None)

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from support import make_customer_table, train_with_cli  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def bentoml_home() -> str:
    return _HOME


@pytest.fixture(scope="session")
def default_model() -> str:
    """The default iris model, trained once into the session's store; its tag."""
    from keyed_serving.model.training import train_default

    return train_default().tag


@pytest.fixture(scope="session")
def asgi_client(default_model: str) -> Iterator[Any]:
    """The entry's HTTP surface in-process, through BentoML's own ASGI app: one per session,
    since BentoML registers its Prometheus metrics once per process."""
    from starlette.testclient import TestClient

    import service

    with TestClient(service.KeyedPrediction.to_asgi()) as client:
        yield client


@pytest.fixture(scope="session")
def customer_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "customers.csv"
    make_customer_table(1500).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def customer_model(customer_csv: Path) -> str:
    """Trained through train.py's command line, as a user would; its tag."""
    return train_with_cli(customer_csv, "churned", "customers")
