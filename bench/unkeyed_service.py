"""An unkeyed variant of /predict, served only by the benchmark: the cost of keys.

It is the keyed service itself, a subclass of its class with two seams overridden
(``validate`` and ``predict_answer``): the same middlewares, lean route, deadline,
validation of every value, coalescing, runner, model, result checks, metrics, summary and
error handling, with the caller's keys taken out at each stage where keys are work:

- the body has no keys, so none are parsed, checked for type and uniqueness or packed:
  rows are numbered where they arrive (positions 0..n-1, unique by construction);
- the hop carries those positions as one int64 buffer, where the keyed service carries the
  keys' text;
- results are matched to their block by the positions (one comparison of buffers, as the
  keyed service's is when nothing was reordered);
- the answer gives predictions by position, with no key beside them.

What keys cost is the difference. Served only by bench/keys_ab.py:

    bentoml serve bench.unkeyed_service:UnkeyedPrediction
"""

from __future__ import annotations

from typing import Any

import bentoml
import orjson

import service
from keyed_serving.serving.answers import Answer, column_answer, row_answer, summary
from keyed_serving.serving.reassemble import Scored
from keyed_serving.serving.validate import ValidBatch, validate_request
from service import settings


class _Unkeyed(service.KeyedPrediction.inner):  # type: ignore[name-defined,misc]
    def validate(self, body: Any) -> ValidBatch:
        return validate_request(body, self.spec, settings.max_instances, keyed=False)

    def predict_answer(self, batch: ValidBatch, scored: Scored) -> Answer:
        return unkeyed_answer(batch, scored, self.spec)


def unkeyed_answer(batch: ValidBatch, scored: Scored, spec: Any) -> Answer:
    """The keyed answer's writers, without the keys: by position."""
    if batch.shape == "columns":
        answer: dict[str, Any] = column_answer(batch, scored, spec.classes)
        del answer["keys"]  # the positions: not written
    elif not batch.failures and not scored.errors:
        labels = [str(label) for label in spec.classes or ()]
        probabilities = scored.probabilities
        if probabilities is None:
            answer = {"predictions": [{"prediction": p} for p in scored.predictions]}
        else:
            answer = {
                "predictions": [
                    {"prediction": p, "probabilities": dict(zip(labels, row, strict=True))}
                    for p, row in zip(scored.predictions, probabilities.tolist(), strict=True)
                ]
            }
    else:  # some rows failed: the keyed writer's entries, with the positions taken out
        entries = row_answer(batch, scored, spec.classes)
        answer = {"predictions": [{k: v for k, v in e.items() if k != "key"} for e in entries]}
    body = {"model": spec.tag, **answer, "summary": summary(batch, scored)}
    return Answer(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


UnkeyedPrediction = bentoml.service(**service.ENTRY_SERVICE)(_Unkeyed)
# The same middlewares on /predict's way as the keyed entry's. The lean route answers
# through the slot the inherited start-up hook fills (service.ENTRY); the keyed entry's
# other routes sit inside the lean route, which /predict never passes.
service.add_predict_middlewares(UnkeyedPrediction)
