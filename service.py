"""The HTTP surface: a public keyed entry service over an adaptive-batching model runner.

    POST /predict            {"instances": [{"key": ..., "features": {...}}, ...]}
    POST /predict_file       a table file in (multipart), the scored file out
    POST /predict_file_task  the same as a background task (/submit, /status, /get)
    POST /model_info         (GET too) what the model takes and gives

Stages of a request (see keyed_serving/__init__.py): validate -> cut -> runner
micro-batches -> reassemble, with keys checked on the way back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import bentoml
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, Response

from keyed_serving.chunking import cut
from keyed_serving.dispatch import RunnerUnavailable, send_chunks
from keyed_serving.file_scoring import InvalidFile, score_file
from keyed_serving.http import EntryGate, GetAlias, RefinedDocs, RequestIdFilter, error_response
from keyed_serving.lifecycle import hold_entry_lock, outlive_the_entry
from keyed_serving.metrics import get_metrics
from keyed_serving.model import MODEL_FILE, LoadedModel, ModelSpec
from keyed_serving.reassemble import (
    KeyMismatch,
    answer_in_request_order,
    model_error_details,
    reassemble_by_key,
)
from keyed_serving.schemas import (
    ErrorMode,
    Instance,
    KeyedResult,
    KeyedRow,
    ModelInfo,
    PredictResponse,
    Summary,
)
from keyed_serving.settings import get_settings
from keyed_serving.tables import MEDIA_TYPES, format_of
from keyed_serving.validate import (
    InvalidRequest,
    ValidRow,
    check_request,
    rejection,
    validate_instances,
)

logger = logging.getLogger("keyed_serving")
for _name in ("keyed_serving", "keyed_serving.dispatch", "keyed_serving.model"):
    logging.getLogger(_name).addFilter(RequestIdFilter())
settings = get_settings()
# BentoML routes a task at its path (run now) and at /submit (run in the background).
FILE_PATHS = ("/predict_file", "/predict_file_task", "/predict_file_task/submit")


@bentoml.service(
    workers=1,
    threads=1,
    # The entry retries a failed chunk within its own deadline; a runner call that takes
    # longer than the whole request may is of no use to anyone.
    traffic={"timeout": settings.request_deadline_s},
    # BentoML closes the entry's session to this service every `max_requests` calls while
    # other calls are still in flight on it (shared BENTOML_NOTES): 43% of requests failed
    # at 64 clients with the default of 100. Sessions are reused instead; a hop failure
    # that remains is retried by the entry.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 24 * 3600.0},
)
class ModelRunner:
    """Predicts micro-batches of keyed rows; each result carries its row's chunk id and key."""

    model_ref = bentoml.models.BentoModel(settings.model_tag)

    def __init__(self) -> None:
        stored = self.model_ref
        self.model = LoadedModel.load(
            str(stored.tag), stored.info.metadata, stored.path_of(MODEL_FILE)
        )
        self.metrics = get_metrics()

    @bentoml.on_startup
    def stop_after_the_entry(self) -> None:
        # On SIGTERM the entry drains its in-flight requests; they need this runner alive.
        outlive_the_entry(max_s=settings.drain_max_s)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def predict(self, rows: list[KeyedRow]) -> list[KeyedResult]:
        self.metrics.micro_batch_rows.observe(len(rows))
        self.metrics.micro_batch_chunks.observe(len({row.chunk for row in rows}))
        return self.model.predict_rows(rows)


@bentoml.service(
    workers=1,
    traffic={"timeout": settings.request_deadline_s + 5},
)
class KeyedPrediction:
    """Keyed batch prediction: send instances with your own keys, get each prediction back
    paired with its key, however the server merged or split the work."""

    model_ref = bentoml.models.BentoModel(settings.model_tag)
    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        stored = self.model_ref
        self.spec = ModelSpec.from_metadata(str(stored.tag), stored.info.metadata)
        self.metrics = get_metrics()
        self.entry_lock = hold_entry_lock()  # the runner stops only after this worker

    @bentoml.api
    async def predict(
        self, instances: list[Instance], errors: ErrorMode = "reject"
    ) -> PredictResponse:
        """Predict every instance. The answer holds one entry per instance, in request
        order, each with the key it was sent with. Keys must be unique within a request.

        errors="reject" (default): any invalid instance fails the request with 400 (422 if
        the model itself could not take an instance), naming each key and field; nothing
        is predicted. errors="per_instance": such instances are answered with
        {"key", "error": {"code", "message"}} and the others are predicted.

        503 with Retry-After when the model runner stays overloaded or unavailable past the
        request's deadline: safe to retry as a whole."""
        try:
            check_request(instances, settings.max_instances)
            rows, failures = validate_instances(instances, self.spec)
            if failures and errors == "reject":
                raise rejection(failures)
        except InvalidRequest as exc:
            self.metrics.count_rejected(len(instances), exc.details)
            return error_response(400, exc.summary, exc.details)
        try:
            results = await self._predict_rows_by_key(rows)
        except (RunnerUnavailable, KeyMismatch) as exc:
            return self._runner_failure(exc, len(instances))
        model_failures = [r for r in results if r.error is not None]
        if model_failures and errors == "reject":
            details = model_error_details(rows, results)
            self.metrics.count_rejected(len(instances), details)
            return error_response(
                422, f"the model could not predict {len(details)} instance(s)", details
            )
        entries = answer_in_request_order(
            len(instances), rows, results, failures, self.spec.classes
        )
        failed = len(failures) + len(model_failures)
        self.metrics.count_answered(len(instances) - failed, failures, model_failures)
        return PredictResponse(
            model=self.spec.tag,
            predictions=entries,
            summary=Summary(
                received=len(instances), predicted=len(instances) - failed, failed=failed
            ),
        )

    @bentoml.api
    async def predict_file(self, file: Path, key: str, keep: str = "") -> Path:
        """Score a table file: multipart/form-data with `file` (CSV, Parquet or JSON Lines,
        by its extension), `key` (the key column) and `keep` (columns to copy, a,b,c).
        Answers the scored file in the same format: the key, prediction, one
        probability_<class> column per class, error (why a key has no prediction), and
        the kept columns, in file order. 400 names what is wrong with a file (format, key
        column, duplicate keys, missing features) before anything is predicted."""
        return await self._score_upload(file, key, keep, in_memory=False)  # type: ignore[no-any-return]

    @bentoml.task
    async def predict_file_task(self, file: Path, key: str, keep: str = "") -> Path:
        """The same as /predict_file, as a task for large files: POST
        /predict_file_task/submit, then GET /predict_file_task/status and /get?task_id=."""
        return await self._score_upload(file, key, keep, in_memory=True)  # type: ignore[no-any-return]

    @bentoml.api
    def model_info(self) -> ModelInfo:
        """What the model takes and gives: features with their types, classes, task and
        holdout score. Also served on GET."""
        return self.spec.info(settings.max_instances)

    async def _score_upload(self, file: Path, key: str, keep: str, in_memory: bool) -> Any:
        work = Path(tempfile.mkdtemp(prefix="keyed-file-"))
        target = work / f"scored{file.suffix.lower()}"
        try:
            summary = await score_file(
                file,
                target,
                key,
                [c for c in keep.split(",") if c],
                self.spec,
                self._predict_rows_by_key,
                settings.file_batch_rows,
            )
        except InvalidFile as exc:
            shutil.rmtree(work, ignore_errors=True)
            return error_response(400, f"the file cannot be scored: {exc}")
        except (RunnerUnavailable, KeyMismatch) as exc:
            shutil.rmtree(work, ignore_errors=True)
            return self._runner_failure(exc, None)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self.metrics.instances.labels("predicted").inc(summary.predicted)
        self.metrics.instances.labels("answered_with_error").inc(summary.failed)
        headers = {
            "X-Rows": str(summary.rows),
            "X-Predicted": str(summary.predicted),
            "X-Failed": str(summary.failed),
        }
        media_type = MEDIA_TYPES[format_of(target)]
        if in_memory:  # a task's result is stored by BentoML, not streamed from this file
            content = target.read_bytes()
            shutil.rmtree(work, ignore_errors=True)
            return Response(content, media_type=media_type, headers=headers)
        return FileResponse(
            target,
            filename=target.name,
            media_type=media_type,
            headers=headers,
            background=BackgroundTask(shutil.rmtree, work),
        )

    def _runner_failure(self, exc: RunnerUnavailable | KeyMismatch, instances: int | None) -> Any:
        """The answer when the runner path failed: 503 + Retry-After (safe to retry), or 500
        for results that did not match the keys sent (logged and counted)."""
        if instances is not None:
            self.metrics.instances.labels("failed").inc(instances)
        if isinstance(exc, KeyMismatch):
            logger.error("answering 500, key mismatch: %s", exc)
            self.metrics.key_mismatches.inc()
            return error_response(500, "internal error: results did not match the keys sent")
        logger.warning("answering 503: %s", exc)
        return error_response(
            503,
            "the model runner is overloaded or unavailable; retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    async def _predict_rows_by_key(self, rows: list[ValidRow]) -> list[KeyedResult]:
        """Rows -> chunks -> runner micro-batches -> results in row order, keys verified."""
        if not rows:
            return []
        chunks = cut(rows, settings.chunk_rows)
        results = await send_chunks(
            chunks,
            self.runner.to_async.predict,
            deadline_s=settings.request_deadline_s,
            initial_backoff_s=settings.retry_initial_backoff_s,
            max_backoff_s=settings.retry_max_backoff_s,
            on_retry=lambda exc: self.metrics.runner_retries.labels(type(exc).__name__).inc(),
        )
        return reassemble_by_key(chunks, results)


# Starlette runs the first middleware added outermost: the gate sees every request first.
KeyedPrediction.add_asgi_middleware(  # type: ignore[attr-defined]
    EntryGate,
    api_token=settings.api_token,
    max_body_bytes=settings.max_body_bytes,
    max_concurrency=settings.max_concurrency,
    retry_after_s=settings.retry_after_s,
    file_paths=FILE_PATHS,
    max_file_bytes=settings.max_file_bytes,
)
KeyedPrediction.add_asgi_middleware(GetAlias, paths=["/model_info"])  # type: ignore[attr-defined]
KeyedPrediction.add_asgi_middleware(RefinedDocs, model_tag=settings.model_tag)  # type: ignore[attr-defined]
