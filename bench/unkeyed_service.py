"""An unkeyed variant of /predict, served only by the benchmark: the cost of keys.

The same stack as the keyed service (its middlewares on /predict's way, the lean route,
orjson, validation, coalescing, the instance counts, the same ModelRunner and model), except
that the caller sends no keys and gets predictions by position: rows are numbered where they
arrive (an int64 range, one buffer over the hop) and results are taken by position, with no
key check. What keys cost is the difference.

    bentoml serve bench.unkeyed_service:UnkeyedPrediction
"""

from __future__ import annotations

from typing import Any

import bentoml
import orjson
from starlette.responses import Response

from keyed_serving.lazy import import_now
from keyed_serving.lazy import numpy as np
from keyed_serving.model.spec import ModelSpec
from keyed_serving.serving.chunking import cut
from keyed_serving.serving.compression import AnswerCompression
from keyed_serving.serving.dispatch import Coalescer, send_blocks
from keyed_serving.serving.http import (
    AnswerStamp,
    EntryGate,
    ErrorsAnswered,
    add_outermost,
    bind_apis_once,
    error_response,
)
from keyed_serving.serving.metrics import get_metrics
from keyed_serving.serving.routes import EntrySlot, LeanRoutes
from keyed_serving.serving.validate import InvalidRequest, validate_request
from service import (
    GATE,
    MODEL_TAG,
    QUIET,
    ModelRunner,
    PredictRequest,
    cors_enabled,
    settings,
    settle_the_heap,
)

ENTRY = EntrySlot()


@bentoml.service(workers=settings.entry_workers, **QUIET)
class UnkeyedPrediction:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)
    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        import_now()  # as the keyed entry does: numpy and aiohttp before the first request
        self.spec = ModelSpec.from_metadata(str(self.model_ref.tag), self.model_ref.info.metadata)
        self.coalescer = Coalescer(
            lambda blocks: self.runner.to_async.predict(blocks),
            max_calls=settings.runner_calls,
            max_rows=settings.coalesce_rows,
            linger_s=settings.coalesce_linger_ms / 1000,
        )
        self.metrics = get_metrics()
        bind_apis_once(self, "predict")

    @bentoml.on_startup
    def serve_the_lean_routes(self) -> None:
        ENTRY.instance = self
        settle_the_heap(many_requests=True)

    @bentoml.api(input_spec=PredictRequest)
    async def predict(self, ctx: bentoml.Context, **_: Any) -> Any:
        response = await self.predict_raw(await ctx.request.body())
        ctx.response.status_code = response.status_code
        return response

    async def infer_raw(self, *_: Any) -> Response:
        return error_response(404, "the unkeyed variant has no V2 route")  # type: ignore[no-any-return]

    async def predict_raw(self, raw: bytes) -> Response:
        body = orjson.loads(raw)
        try:
            batch = validate_request(body, self.spec, settings.max_instances, keyed=False)
        except InvalidRequest as exc:
            return error_response(400, exc.summary, exc.details)  # type: ignore[no-any-return]
        blocks = cut(batch, settings.chunk_rows, self.spec.tag)
        for block in blocks:  # numbered rows, not keys: one int64 buffer over the hop
            block.keys = np.arange(len(block.keys))
        results = await send_blocks(
            blocks,
            self.coalescer.predict,
            deadline_s=settings.request_deadline_s,
            initial_backoff_s=settings.retry_initial_backoff_s,
            max_backoff_s=settings.retry_max_backoff_s,
        )
        self.metrics.count_answered(len(batch.keys), batch.failures, {})
        predictions = np.concatenate([np.asarray(r.predictions) for r in results]).tolist()
        probabilities = np.concatenate([np.asarray(r.probabilities) for r in results])
        labels = [str(label) for label in self.spec.classes or ()]
        if batch.shape == "columns":
            by_class = np.ascontiguousarray(probabilities.T)
            answer: Any = {
                "predictions": predictions,
                "probabilities": {label: by_class[i] for i, label in enumerate(labels)},
            }
        else:
            answer = {
                "predictions": [
                    {"prediction": p, "probabilities": dict(zip(labels, row, strict=True))}
                    for p, row in zip(predictions, probabilities.tolist(), strict=True)
                ]
            }
        return Response(
            orjson.dumps({"model": self.spec.tag, **answer}, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type="application/json",
        )


# The same middlewares on /predict's way as the keyed entry's, in the same order (request
# ids, errors, compression, limits, the lean route) and the same instance counts: the
# variants differ in keys only. (The keyed entry's other routes sit inside the lean route:
# /predict never passes them.)
add_outermost(UnkeyedPrediction, AnswerStamp, retry_after_s=settings.retry_after_s)
UnkeyedPrediction.add_asgi_middleware(ErrorsAnswered)  # type: ignore[attr-defined]
UnkeyedPrediction.add_asgi_middleware(  # type: ignore[attr-defined]
    AnswerCompression,
    enabled=settings.answer_compression,
    minimum_bytes=settings.answer_compression_min_bytes,
)
UnkeyedPrediction.add_asgi_middleware(EntryGate, **GATE)  # type: ignore[attr-defined]
UnkeyedPrediction.add_asgi_middleware(LeanRoutes, slot=ENTRY, cors=cors_enabled())  # type: ignore[attr-defined]
