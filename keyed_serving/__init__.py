"""Keyed batch prediction serving on BentoML.

The request path, one module per stage:

1. entry: ``service.py`` (``KeyedPrediction``), the HTTP surface;
2. validate: :mod:`keyed_serving.validate`, wire instances -> keyed rows or per-key errors;
3. cut: :mod:`keyed_serving.chunking`, keyed rows -> runner-sized chunks;
4. runner: ``service.py`` (``ModelRunner``), adaptive micro-batches of keyed rows;
5. model: :mod:`keyed_serving.model`, the loaded pipeline and what it takes;
6. reassemble: :mod:`keyed_serving.reassemble`, chunk results -> results in request order,
   checked key by key;
7. answer formats: :mod:`keyed_serving.answers`, the checked results as rows, columns or an
   Open Inference Protocol (V2) answer.

What a key is: :mod:`keyed_serving.keys`, the one definition every path calls. V2
requests are decoded by :mod:`keyed_serving.v2` into the columnar body stage 2 takes.

:mod:`keyed_serving.dispatch` carries chunks from 3 to 4 and back (retries, deadline).

Around them: :mod:`keyed_serving.http` (the gate in front of the entry),
:mod:`keyed_serving.routes` (what the entry answers before BentoML's router: the lean
routes, the V2 GET routes, the API page),
:mod:`keyed_serving.file_scoring` (/predict_file through the same stages),
:mod:`keyed_serving.client` and :mod:`keyed_serving.cli` (``keyed-score``: wire format
only), :mod:`keyed_serving.tables` (file formats), :mod:`keyed_serving.training`,
:mod:`keyed_serving.importing` (``keyed-import``, ``save_model``: a model you already have).
"""

from typing import Any

__all__ = ["save_model"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the client and the CLI need none of the model's packages.
    if name == "save_model":
        from keyed_serving.importing import save_model

        return save_model
    raise AttributeError(f"module 'keyed_serving' has no attribute {name!r}")
