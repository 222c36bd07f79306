"""Keyed batch prediction serving on BentoML.

The package is laid out by part; each folder's ``__init__`` says what it is and what it may
import (the rules are import-linter contracts in ``pyproject.toml``, checked by ``make lint``):

- the shared base, at the top, below every part: :mod:`~keyed_serving.keys` (the one
  definition of a key), :mod:`~keyed_serving.schemas` (the wire schemas, in BentoML's
  types, so the client keeps off them), :mod:`~keyed_serving.settings`,
  :mod:`~keyed_serving.tables` (the one table reader and writer) and
  :mod:`~keyed_serving.formats` (file formats by name), :mod:`~keyed_serving.spark_local`
  (a local Spark session, for scoring and evaluating on Spark) and
  :mod:`~keyed_serving.lazy` (numpy and aiohttp imported at their first use, so that
  ``bentoml serve``'s supervisor maps neither);
- :mod:`keyed_serving.serving`: the request path inside the server, one module per stage,
  conducted by ``service.py``;
- :mod:`keyed_serving.model`: stored models (find, load, guard versions), predicting a
  micro-batch, ``keyed-import``, training, the bento's pins;
- :mod:`keyed_serving.client`: the caller's side, ``KeyedClient`` and ``keyed-score``
  (the wire format only: no scikit-learn, no BentoML);
- :mod:`keyed_serving.offline`: keyed scoring on Spark;
- :mod:`keyed_serving.capture`: continuous evaluation's write side: every answered
  prediction kept by key, and the labels that come later, as Parquet datasets (its
  ``layout`` is the contract with every reader);
- :mod:`keyed_serving.evaluation`: its read side, ``keyed-evaluate``: predictions joined
  with their labels on DuckDB or Spark, quality per model version, the reports.

The public names below are imported on first use, so that importing the package (the
client, say) loads none of the model's packages.
"""

from typing import Any

__all__ = [
    "InvalidKeys",
    "KeyedClient",
    "ScoringError",
    "ScoringStopped",
    "save_model",
    "score_spark",
]

_CLIENT_NAMES = frozenset({"InvalidKeys", "KeyedClient", "ScoringError", "ScoringStopped"})


def __getattr__(name: str) -> Any:
    # Imported on first use: the client and the CLI need none of the model's packages.
    if name == "save_model":
        from keyed_serving.model.importing import save_model

        return save_model
    if name in _CLIENT_NAMES:
        from keyed_serving.client import keyed_client

        return getattr(keyed_client, name)
    if name == "score_spark":
        from keyed_serving.offline.spark import score_spark

        return score_spark
    raise AttributeError(f"module 'keyed_serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
