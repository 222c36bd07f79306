"""The HTTP surface: a public keyed entry service over an adaptive-batching model runner.

    POST /predict            {"instances": [{"key": ..., "features": {...}}, ...]}
                             or {"keys": [...], "columns": {"<feature>": [...]}}
    POST /predict_file       a table file in (multipart), the scored file out
    POST /predict_file_task  the same as a background task (/submit, /status, /get)
    POST /model_info         (GET too) what the model takes and gives
    POST /labels             {"labels": [{"key", "label", "time"?, "request_id"?}]}: what
                             really happened, kept beside the captured predictions

With KEYED_CAPTURE_DIR every answered instance is captured by key (keyed_serving.capture),
off the request path.

Stages of a request (see keyed_serving/serving/__init__.py): validate -> cut -> runner
micro-batches -> reassemble, with keys checked on the way back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import bentoml
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, JSONResponse, Response

from keyed_serving.capture.files import Captured, CapturedModel
from keyed_serving.capture.labels import InvalidLabels, LabelsRequest, read_labels, write_labels
from keyed_serving.capture.writer import CaptureWriter
from keyed_serving.formats import MEDIA_TYPES, format_of
from keyed_serving.lazy import import_now
from keyed_serving.model.store import check_servable, load_stored, served_model_tag, spec_of
from keyed_serving.schemas import (
    BlockResult,
    ErrorDetail,
    InferenceRequest,
    InferenceResponse,
    KeyedBlock,
    ModelInfo,
    PredictRequest,
    PredictResponse,
)
from keyed_serving.serving.admission import InFlight, time_left
from keyed_serving.serving.answers import (
    Answer,
    Refusal,
    keyed_answer,
    model_error_details,
    v2_answer,
)
from keyed_serving.serving.chunking import cut
from keyed_serving.serving.compression import AnswerCompression
from keyed_serving.serving.dispatch import Coalescer, RunnerUnavailable, send_blocks
from keyed_serving.serving.http import (
    AnswerStamp,
    EntryGate,
    ErrorsAnswered,
    RequestIdFilter,
    add_outermost,
    bind_apis_once,
    error_response,
    request_id,
    request_id_for,
)
from keyed_serving.serving.lifecycle import hold_entry_lock, outlive_the_entry, settle_the_heap
from keyed_serving.serving.metrics import get_metrics
from keyed_serving.serving.reassemble import (
    KeyMismatch,
    ModelVersionMismatch,
    Scored,
    reassemble_by_key,
)
from keyed_serving.serving.routes import (
    ApiPage,
    EntrySlot,
    GetAlias,
    LeanRoutes,
    OpenInferenceRoutes,
    RefinedDocs,
)
from keyed_serving.serving.v2 import (
    V2Error,
    decode_infer_request,
    model_name,
    model_version,
    unknown_model,
)
from keyed_serving.serving.validate import (
    InvalidRequest,
    ValidBatch,
    decode_body,
    decode_predict_body,
    rejection,
    validate_request,
)
from keyed_serving.settings import get_settings

logger = logging.getLogger("keyed_serving")
for _name in ("keyed_serving", "keyed_serving.serving.dispatch", "keyed_serving.model"):
    logging.getLogger(_name).addFilter(RequestIdFilter())
settings = get_settings()
# Resolved once where the server starts and handed to every worker (see served_model_tag):
# the entry and the runner serve this one version, whatever is saved meanwhile. Loaded
# from a bento, this code serves the model the bento carries.
MODEL_TAG = served_model_tag(settings.model_tag, source=Path(__file__).resolve().parent)
check_servable(MODEL_TAG)  # a model this environment cannot load stops the start here
# The lean routes' way to the entry instance BentoML makes (see LeanRoutes).
ENTRY = EntrySlot()
# Requests and body bytes in flight on this worker, and those waiting for a turn, over HTTP
# and gRPC together.
IN_FLIGHT = InFlight(
    settings.max_concurrency,
    settings.max_queue,
    observe=lambda outcome: get_metrics().count_admission(outcome),
)
# BentoML routes a task at its path (run now) and at /submit (run in the background).
FILE_PATHS = ("/predict_file", "/predict_file_task", "/predict_file_task/submit")
# Capture's source column, by route (keyed_serving.capture.layout.SOURCE).
# (gRPC's: keyed_serving.serving.grpc_v2.CAPTURE_SOURCE.)
PREDICT, PREDICT_FILE, V2_HTTP = "predict", "predict_file", "v2_http"
# Task operations that hold or load a whole upload in memory (BentoML's task store).
TASK_PATHS = ("/predict_file_task/submit", "/predict_file_task/retry", "/predict_file_task/get")


# Tracing and access logs cost more than the rest of a small request (measured: a no-op
# BentoML API served 1,070 requests/s with OpenTelemetry's middleware on its path and
# 2,790 without). Traces of the hot paths go nowhere unless an exporter is configured, so
# they are left out here; a deployment that exports traces sets tracing.excluded_urls in
# its BENTOML_CONFIG, which takes precedence. Errors are still logged, and /metrics counts
# every request.
QUIET = {
    "logging": {"access": {"enabled": settings.access_log}},
    "tracing": {"excluded_urls": ["/predict", "/v2/models/"]},
}


@bentoml.service(
    workers=settings.runner_workers,
    threads=1,
    # The entry retries a failed block within its own deadline; a runner call that takes
    # longer than the whole request may is of no use to anyone.
    traffic={"timeout": settings.request_deadline_s},
    # BentoML closes the entry's session to this service every `max_requests` calls while
    # other calls are still in flight on it (shared BENTOML_NOTES): 43% of requests failed
    # at 64 clients with the default of 100. Sessions are reused instead; a hop failure
    # that remains is retried by the entry.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 24 * 3600.0},
    **QUIET,
)
class ModelRunner:
    """Predicts micro-batches of keyed blocks; each result carries its block's chunk id and
    keys and the model version that predicted it (a block for another version is refused)."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # Any kind of stored model (train.py, keyed-import, plain bentoml.sklearn); one
        # pickled with other package versions than these is refused (see check_versions).
        self.model = load_stored(self.model_ref)
        self.metrics = get_metrics()
        bind_apis_once(self, "predict")

    @bentoml.on_startup
    def stop_after_the_entry(self) -> None:
        # On SIGTERM the entry drains its in-flight requests; they need this runner alive.
        outlive_the_entry(max_s=settings.drain_max_s)
        settle_the_heap()

    @bentoml.api(
        batchable=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    async def predict(self, blocks: list[KeyedBlock]) -> list[BlockResult]:
        # Runs on the event loop, not in a thread: BentoML's dispatcher polls every
        # millisecond while a batch runs, and from a thread that polling took the GIL from
        # the model over and over. This worker serves nothing else while it predicts (the
        # rare search for rows the model raised on runs in a thread, bounded).
        self.metrics.micro_batch_rows.observe(sum(len(block.keys) for block in blocks))
        self.metrics.micro_batch_chunks.observe(len(blocks))
        others = len(blocks) - len(self.model.own_blocks(blocks))
        if others:
            logger.error(
                "refusing %d block(s) sent for another model version: this runner serves %s",
                others,
                self.model.spec.tag,
            )
            self.metrics.model_version_mismatches.labels("runner").inc(others)
        return await self.model.predict_blocks_async(blocks)


# BentoML names a response's media type by generating the output's JSON schema on every
# call (a millisecond and more per micro-batch, measured). The runner answers the entry
# only, in BentoML's pickle format: say so once.
ModelRunner.apis["predict"].output_spec.media_type = "application/vnd.bentoml+pickle"  # type: ignore[attr-defined]


# The entry service's BentoML settings (the benchmark's unkeyed variant takes the same).
ENTRY_SERVICE: dict[str, Any] = {
    "workers": settings.entry_workers,
    "traffic": {"timeout": settings.request_deadline_s + 5},
    **QUIET,
}


@bentoml.service(**ENTRY_SERVICE)
class KeyedPrediction:
    """Keyed batch prediction: send instances with your own keys, get each prediction back
    paired with its key, however the server merged or split the work."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)
    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        # numpy and aiohttp, which the supervisor does without (see keyed_serving.lazy), before
        # the first request rather than in it. (The runner's model load imports numpy.)
        import_now()
        self.spec = spec_of(self.model_ref)
        self.metrics = get_metrics()
        self.entry_lock = hold_entry_lock()  # the runner stops only after this worker
        bind_apis_once(self, "predict", "model_info")
        self.capture: CaptureWriter | None = None  # started with the worker (start_capture)
        self.coalescer = Coalescer(
            lambda blocks: self.runner.to_async.predict(blocks),
            # Without batching, every block is a call of its own, sent at once.
            max_calls=settings.runner_calls if settings.batching else 2**31 - 1,
            max_rows=settings.coalesce_rows if settings.batching else 1,
            linger_s=settings.coalesce_linger_ms / 1000 if settings.batching else 0.0,
        )

    @bentoml.on_startup
    def serve_the_lean_routes(self) -> None:
        # Only the instance BentoML serves (not one a test makes) answers the lean routes.
        ENTRY.instance = self
        settle_the_heap(many_requests=True)

    @bentoml.on_startup
    def start_capture(self) -> None:
        """With KEYED_CAPTURE_DIR: this worker's capture writer and its flush thread."""
        if settings.capture_dir is None:
            return
        self.capture = CaptureWriter(
            settings.capture_dir,
            CapturedModel.of(self.spec),
            features=settings.capture_features,
            flush_s=settings.capture_flush_s,
            buffer_rows=settings.capture_buffer_rows,
            max_bytes=settings.capture_max_bytes,
            sample=settings.capture_sample,
            on_dropped=lambda reason, rows: self.metrics.capture_dropped.labels(reason).inc(rows),
            on_written=self.metrics.capture_written.inc,
        ).start()

    @bentoml.on_startup
    async def serve_grpc(self) -> None:
        """The Open Inference Protocol over gRPC, with KEYED_GRPC_PORT: in this worker's
        event loop, on the HTTP server's host (or KEYED_GRPC_HOST)."""
        self.grpc_server: Any = None
        if settings.grpc_port is None:
            return
        from keyed_serving.serving.grpc_v2 import (
            Gate,
            InferenceServicer,
            http_host,
            start_server,
        )

        # The HTTP gate's own bounds and counts (GATE), so the two cannot drift apart.
        gate = Gate(**{field.name: GATE[field.name] for field in dataclasses.fields(Gate)})
        servicer = InferenceServicer(self, gate, _server_version(), settings.max_instances)
        host = settings.grpc_host or http_host() or "0.0.0.0"
        self.grpc_server = await start_server(servicer, host, settings.grpc_port, gate)

    @bentoml.on_shutdown
    async def stop_grpc_then_capture(self) -> None:
        # Calls in flight finish (as HTTP's drain does); new ones are refused.
        if getattr(self, "grpc_server", None) is not None:
            await self.grpc_server.stop(grace=settings.drain_max_s)
        # HTTP's requests were drained before the shutdown hooks run, gRPC's just now:
        # everything answered is in the buffer, written here (a SIGTERM loses nothing).
        if self.capture is not None:
            await anyio.to_thread.run_sync(self.capture.close)

    async def ready(self) -> bool:
        """Ready as /readyz says: the model runner answers its own readiness probe."""
        is_ready = getattr(self.runner, "is_ready", None)
        return bool(await is_ready(5)) if is_ready is not None else True

    @bentoml.api(input_spec=PredictRequest)
    async def predict(
        self,
        ctx: bentoml.Context = None,  # type: ignore[assignment]  # None when called in-process
        **body: Any,
    ) -> PredictResponse:
        """Predict every instance. The answer holds one entry per instance, in request
        order, each with the key it was sent with. Keys must be unique within a request.

        Two shapes, answered in kind: rows, {"instances": [{"key", "features": {...}}]}, and
        columns, {"keys": [...], "columns": {"<feature>": [...]}} (one list per feature, as
        long as keys), answered as {"model", "keys", "predictions", "probabilities": {class:
        [...]}, "errors", "summary"}. Columns are the fast format for bulk requests.

        errors="reject" (default): any invalid instance fails the request with 400 (422 if
        the model itself could not take an instance), naming each key and field; nothing
        is predicted. errors="per_instance": such instances are answered with
        {"key", "error": {"code", "message"}} and the others are predicted.

        503 with Retry-After when the model runner stays overloaded or unavailable past the
        request's deadline: safe to retry as a whole."""
        # In a server the body is decoded here (see PredictRequest); called in-process, the
        # arguments are the body.
        if ctx is None:
            decoded = {name: _plain(value) for name, value in body.items() if value is not None}
            return await self.predict_body(decoded)  # type: ignore[return-value]
        response = await self.predict_raw(await ctx.request.body())
        ctx.response.status_code = response.status_code  # BentoML sets it from ctx
        return response  # type: ignore[return-value]  # sent as it is

    async def predict_raw(self, raw: bytes) -> Response:
        """/predict for the bytes of a body (also the lean route's entry, see LeanRoutes)."""
        try:
            decoded = decode_predict_body(raw)
        except InvalidRequest as exc:
            return error_response(400, exc.summary, exc.details)  # type: ignore[no-any-return]
        return await self.predict_body(decoded)

    async def predict_body(self, body: Any) -> Response:
        """/predict for a decoded body: validate -> cut -> runner -> reassemble -> answer."""
        return await self.answer(body, self.predict_answer, name_first=False, source=PREDICT)

    def predict_answer(self, batch: ValidBatch, scored: Scored) -> Answer:
        """/predict's answer for checked results (the benchmark's unkeyed variant writes it
        without the keys: bench/unkeyed_service.py)."""
        return keyed_answer(batch, scored, self.spec)

    async def answer(
        self,
        body: Any,
        write: Callable[[ValidBatch, Scored], Answer],
        *,
        name_first: bool,
        source: str,
    ) -> Response:
        """Any decoded body in the columnar or row shape -> the answer ``write`` gives for
        its checked results, or the error answer. ``name_first``: the error's summary also
        says the first problem (for clients that show only that line); ``source``: the
        route, as capture names it."""
        outcome = await self.score(body, name_first=name_first, source=source)
        if isinstance(outcome, Refusal):
            return freed_after_sending(refused(outcome), body)
        written = write(*outcome)
        answer = Response(written.body, media_type=written.media_type, headers=written.headers)
        return freed_after_sending(answer, body)

    async def score(
        self, body: Any, *, name_first: bool, source: str, answer_id: str | None = None
    ) -> tuple[ValidBatch, Scored] | Refusal:
        """validate -> cut -> runner -> reassemble, for a decoded body (/predict's, or the
        one a V2 request stands for, over HTTP or gRPC): every key received with its checked
        result, or why there is no answer. What is answered is captured (with
        KEYED_CAPTURE_DIR) under ``answer_id``, else the request's X-Request-ID."""
        try:
            batch = self.validate(body)
            if batch.failures and batch.errors == "reject":
                raise rejection(batch.failures)
        except InvalidRequest as exc:
            self.metrics.count_rejected(_instances_sent(body), exc.details)
            return Refusal(400, _summary(exc.summary, exc.details, name_first), exc.details)
        try:
            # What is left of the request's deadline once it had its turn (see admission).
            scored = await self.predict_batch(batch, time_left(settings.request_deadline_s))
        except (RunnerUnavailable, KeyMismatch) as exc:
            return self._runner_failure(exc, batch.received)
        if scored.errors and batch.errors == "reject":
            details = model_error_details(batch, scored)
            self.metrics.count_rejected(batch.received, details)
            said = f"the model could not predict {len(details)} instance(s)"
            return Refusal(422, _summary(said, details, name_first), details)
        self.metrics.count_answered(
            batch.received - len(batch.failures) - scored.failed, batch.failures, scored.errors
        )
        if self.capture is not None:
            self.capture.record(captured(batch, scored, source, answer_id))
        return batch, scored

    def validate(self, body: Any) -> ValidBatch:
        """The validate stage (the benchmark's unkeyed variant numbers rows here instead of
        taking keys: bench/unkeyed_service.py)."""
        return validate_request(body, self.spec, settings.max_instances)

    @bentoml.api(route="/v2/models/{model_name}/infer", input_spec=InferenceRequest)
    async def infer(
        self,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
        **body: Any,
    ) -> InferenceResponse:
        """Open Inference Protocol (KServe V2) inference, with keys: an input "key" (BYTES
        or INT64, one per instance, unique) and one input per feature (numbers FP64, FP32,
        INT64 or INT32, NaN for missing; categories BYTES), shape [N] or [N, 1]. Outputs
        "key" (as sent), "prediction", "probabilities" ([N, classes], classifiers) and,
        with parameters {"errors": "per_instance"}, "error" ("" where predicted). The
        binary tensor data extension is supported both ways (tritonclient's default).
        400 names the input or key at fault; 422 when the model could not take some
        instances; 503 + Retry-After when the runner stays unavailable."""
        return await self._infer(ctx)  # type: ignore[return-value]  # sent as it is

    @bentoml.api(
        route="/v2/models/{model_name}/versions/{model_version}/infer", input_spec=InferenceRequest
    )
    async def infer_version(
        self,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
        **body: Any,
    ) -> InferenceResponse:
        """The same as /v2/models/{model_name}/infer, for the served version only (404 for
        another)."""
        return await self._infer(ctx)  # type: ignore[return-value]  # sent as it is

    async def _infer(self, ctx: bentoml.Context) -> Response:
        request = ctx.request
        response = await self.infer_raw(
            request.path_params.get("model_name"),
            request.path_params.get("model_version"),
            await request.body(),
            request.headers.get("inference-header-content-length"),
        )
        ctx.response.status_code = response.status_code
        return response

    async def infer_raw(
        self, name: str | None, version: str | None, raw: bytes, header_length: str | None
    ) -> Response:
        """V2 inference for the bytes of a body (also the lean route's entry)."""
        if name != model_name(self.spec) or version not in (None, model_version(self.spec)):
            return error_response(404, unknown_model(self.spec, name, version))  # type: ignore[no-any-return]
        try:
            infer = decode_infer_request(raw, header_length, self.spec, settings.max_instances)
        except V2Error as exc:
            return error_response(exc.status, exc.message)  # type: ignore[no-any-return]
        return await self.answer(
            infer.body,
            lambda batch, scored: v2_answer(infer, batch, scored, self.spec),
            name_first=True,
            source=V2_HTTP,
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

    @bentoml.api(route="/labels", input_spec=LabelsRequest)
    async def labels(
        self,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
        **body: Any,
    ) -> dict[str, Any]:
        """What really happened, by key, for the evaluation of captured predictions
        (keyed-evaluate): {"labels": [{"key", "label", "time"?, "request_id"?}]}. A label
        joins the prediction of its request_id (the X-Request-ID of the answer), else the
        latest prediction of its key at or before its time (ISO 8601; without an offset,
        UTC; without a time, the latest). Labels are checked one by one: a key as in
        /predict, a number for a regressor, a class for a classifier. Answers
        {"accepted": n, "refused": {reason: n}, "errors": [{"index", "key", "reason",
        "message"}]} (the first 100) once the accepted ones are on disk. 400 for a body
        that is not that shape; 404 when the server keeps no capture (KEYED_CAPTURE_DIR
        unset); 503 when they could not be written."""
        if ctx is None:
            return await self.labels_body(_plain(body))  # type: ignore[return-value]
        response = await self.labels_raw(await ctx.request.body())
        ctx.response.status_code = response.status_code
        return response  # type: ignore[return-value]  # sent as it is

    async def labels_raw(self, raw: bytes) -> Response:
        """/labels for the bytes of a body (also the lean route's entry)."""
        if settings.capture_dir is None:
            return labels_not_kept()
        try:
            body = decode_body(raw)
        except InvalidRequest as exc:
            return error_response(400, exc.summary, exc.details)  # type: ignore[no-any-return]
        return await self.labels_body(body)

    async def labels_body(self, body: Any) -> Response:
        """/labels for a decoded body: checked, written durably, then answered."""
        if settings.capture_dir is None:
            return labels_not_kept()
        try:
            rows = read_labels(body, self.spec.task, settings.max_instances)
        except InvalidLabels as exc:
            return error_response(400, str(exc))  # type: ignore[no-any-return]
        stem = f"{request_id.get()}-{os.getpid()}-{time.time_ns()}"
        try:
            # Durable before the answer: written (and fsync'ed) off the event loop.
            await anyio.to_thread.run_sync(
                write_labels, settings.capture_dir, rows, model_name(self.spec), stem
            )
        except OSError as exc:
            logger.error("answering 503, labels not written: %s", exc)
            said = f"the labels could not be written ({type(exc).__name__}); retry later"
            retry = {"Retry-After": str(settings.retry_after_s)}
            return error_response(503, said, headers=retry)  # type: ignore[no-any-return]
        self.metrics.labels.labels("accepted").inc(rows.accepted)
        for reason, count in rows.refused.items():
            self.metrics.labels.labels(reason).inc(count)
        return JSONResponse(rows.answer())

    @bentoml.api
    def model_info(self) -> ModelInfo:
        """What the model takes and gives: features with their types, classes, task and
        holdout score. Also served on GET."""
        return self.spec.info(settings.max_instances)

    async def _score_upload(self, file: Path, key: str, keep: str, in_memory: bool) -> Any:
        # pandas and pyarrow load with the first file, not with every entry worker.
        from keyed_serving.serving.file_scoring import InvalidFile, score_file

        work = Path(tempfile.mkdtemp(prefix="keyed-file-"))
        target = work / f"scored{file.suffix.lower()}"
        try:
            summary = await score_file(
                file,
                target,
                key,
                [c for c in keep.split(",") if c],
                self.spec,
                self._predict_and_capture,
                settings.file_batch_rows,
            )
        except InvalidFile as exc:
            shutil.rmtree(work, ignore_errors=True)
            return error_response(400, f"the file cannot be scored: {exc}")
        except (RunnerUnavailable, KeyMismatch) as exc:
            shutil.rmtree(work, ignore_errors=True)
            return refused(self._runner_failure(exc, None))
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
        if in_memory:
            # A task's answer is consumed by BentoML's task store with a scope that has no
            # method, which a FileResponse cannot be sent with: the bytes, read off the loop.
            content = await anyio.to_thread.run_sync(target.read_bytes)
            shutil.rmtree(work, ignore_errors=True)
            return Response(content, media_type=media_type, headers=headers)
        return FileResponse(
            target,
            filename=target.name,
            media_type=media_type,
            headers=headers,
            background=BackgroundTask(shutil.rmtree, work),
        )

    async def _predict_and_capture(self, batch: ValidBatch) -> Scored:
        """A file's batch predicted, and captured as it is written: a file that fails
        later (503) keeps the batches predicted before it in the capture (a retry predicts
        them again under another request id; the evaluation joins one of them)."""
        scored = await self.predict_batch(batch)
        if self.capture is not None:
            self.capture.record(captured(batch, scored, PREDICT_FILE))
        return scored

    def _runner_failure(
        self, exc: RunnerUnavailable | KeyMismatch, instances: int | None
    ) -> Refusal:
        """Why the runner path gave no answer: 503 + Retry-After (safe to retry; also for
        results of another model version), or 500 for results that did not match the keys
        sent (logged and counted)."""
        if instances is not None:
            self.metrics.instances.labels("failed").inc(instances)
        retry = {"Retry-After": str(settings.retry_after_s)}
        if isinstance(exc, ModelVersionMismatch):
            # A runner restarted with another version, or one deployed apart: what it
            # predicted must not be answered under this entry's version. Retrying may reach
            # a runner of the right version.
            logger.error("answering 503, model version mismatch: %s", exc)
            self.metrics.model_version_mismatches.labels("entry").inc()
            said = f"the model runner does not serve {self.spec.tag} right now; retry later"
            return Refusal(503, said, headers=retry)
        if isinstance(exc, KeyMismatch):
            logger.error("answering 500, key mismatch: %s", exc)
            self.metrics.key_mismatches.inc()
            return Refusal(500, "internal error: results did not match the keys sent")
        logger.warning("answering 503: %s", exc)
        return Refusal(
            503, "the model runner is overloaded or unavailable; retry later", headers=retry
        )

    async def predict_batch(self, batch: ValidBatch, deadline_s: float | None = None) -> Scored:
        """Rows -> blocks -> runner micro-batches -> results in row order, keys verified,
        within ``deadline_s`` (a file's batches: each within the request deadline)."""
        if not batch.keys:
            return Scored([], None, {})
        blocks = cut(batch, settings.chunk_rows, self.spec.tag)
        results = await send_blocks(
            blocks,
            self.coalescer.predict,
            deadline_s=settings.request_deadline_s if deadline_s is None else deadline_s,
            initial_backoff_s=settings.retry_initial_backoff_s,
            max_backoff_s=settings.retry_max_backoff_s,
            on_retry=lambda exc: self.metrics.runner_retries.labels(type(exc).__name__).inc(),
        )
        return reassemble_by_key(blocks, results)


def freed_after_sending(response: Response, *held: Any) -> Response:
    """``response``, holding ``held`` (a decoded body) until it has been sent: a body of
    10,000 rows takes about 0.15 ms to free (measured), which then no longer delays its
    answer. Starlette runs a response's background task once the response is sent."""
    if response.background is None:
        response.background = BackgroundTask(_release, *held)
    return response


async def _release(*held: Any) -> None:
    """Nothing: what ``held`` referred to is freed when the task that held it is."""


def captured(
    batch: ValidBatch, scored: Scored, source: str, answer_id: str | None = None
) -> Captured:
    """What a request answered, by reference (converted to rows off the request path)."""
    return Captured(
        # Outside a request (an in-process call): an id of its own.
        request_id=answer_id or _answer_id(),
        source=source,
        ts=time.time(),
        keys=batch.keys,
        columns=batch.columns,
        predictions=scored.predictions,
        probabilities=scored.probabilities,
        errors={row: (error.code, error.message) for row, error in scored.errors.items()},
        refused=[
            (failure.key, failure.details[0].type, failure.details[0].msg)
            for failure in batch.failures
        ],
    )


def labels_not_kept() -> Any:
    """/labels on a server without capture: 404, naming the setting that turns it on."""
    said = "labels are not kept: this server was started without KEYED_CAPTURE_DIR"
    return error_response(404, said)


def _answer_id() -> str:
    current = request_id.get()
    return current if current != "-" else request_id_for("")


def refused(refusal: Refusal) -> Any:
    """A refusal as an HTTP error answer."""
    return error_response(refusal.status, refusal.summary, refusal.details, refusal.headers)


def _summary(summary: str, details: Sequence[ErrorDetail], name_first: bool) -> str:
    named = name_first and details and details[0].msg != summary
    return f"{summary}: {details[0].msg}" if named else summary


def cors_enabled() -> bool:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return bool(BentoMLContainer.http.cors.enabled.get())


def _server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keyed-serving")
    except PackageNotFoundError:  # a bento that carries the code without installing it
        return "unknown"


def _instances_sent(body: Any) -> int:
    """How many instances a refused body held, as far as it can be told (for the metric)."""
    sent = body.get("instances", body.get("keys")) if isinstance(body, dict) else None
    return len(sent) if isinstance(sent, list) else 0


def _plain(value: Any) -> Any:
    """In-process arguments as the decoded JSON they stand for (pydantic models dumped)."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


# Starlette runs the first middleware added outermost: the gate sees every request first
# after BentoML's own traffic middlewares, and the stamp wraps them all.
GATE: dict[str, Any] = {
    "api_token": settings.api_token,
    "max_body_bytes": settings.max_body_bytes,
    "retry_after_s": settings.retry_after_s,
    "deadline_s": settings.request_deadline_s,
    "body_budget_bytes": settings.body_budget_bytes,
    "max_body_values": settings.max_body_values,
    "file_paths": FILE_PATHS,
    "max_file_bytes": settings.max_file_bytes,
    "task_paths": TASK_PATHS,
    "max_tasks": settings.max_tasks,
    "max_task_file_bytes": settings.max_task_file_bytes,
    "counts": IN_FLIGHT,
}


def add_predict_middlewares(entry: Any) -> None:
    """The middlewares on /predict's way, outermost first: request ids and Retry-After
    (the stamp), errors, compression, the gate's limits, the lean route (which answers
    through ENTRY). The benchmark's unkeyed variant adds the same."""
    add_outermost(entry, AnswerStamp, retry_after_s=settings.retry_after_s)
    entry.add_asgi_middleware(ErrorsAnswered)
    # Outside the routes that answer (the lean ones included) and inside BentoML's metrics
    # and traffic middlewares: compressing counts in the request's time and its timeout.
    entry.add_asgi_middleware(
        AnswerCompression,
        enabled=settings.answer_compression,
        minimum_bytes=settings.answer_compression_min_bytes,
    )
    entry.add_asgi_middleware(EntryGate, **GATE)
    entry.add_asgi_middleware(LeanRoutes, slot=ENTRY, cors=cors_enabled())


add_predict_middlewares(KeyedPrediction)
KeyedPrediction.add_asgi_middleware(GetAlias, paths=["/model_info"])  # type: ignore[attr-defined]
KeyedPrediction.add_asgi_middleware(  # type: ignore[attr-defined]
    OpenInferenceRoutes, model_tag=MODEL_TAG, server_version=_server_version()
)
KeyedPrediction.add_asgi_middleware(  # type: ignore[attr-defined]
    ApiPage,
    title=f"Keyed prediction: {MODEL_TAG}",
    readme=str(Path(__file__).with_name("README.md")),
)
KeyedPrediction.add_asgi_middleware(RefinedDocs, model_tag=MODEL_TAG)  # type: ignore[attr-defined]
