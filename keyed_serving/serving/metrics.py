"""Prometheus metrics this project adds to BentoML's own (served on ``/metrics``).

``prometheus_client`` is imported on first use, not at import time: BentoML workers set
``PROMETHEUS_MULTIPROC_DIR`` after importing the service module, and a client imported
before that never writes where ``/metrics`` reads (see ``bentoml/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyed_serving.schemas import ErrorDetail, InstanceError
    from keyed_serving.serving.validate import InstanceFailure

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
CHUNK_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self) -> None:
        import prometheus_client as prom

        self.micro_batch_rows: Any = prom.Histogram(
            "keyed_micro_batch_rows",
            "Rows (not requests) per runner micro-batch.",
            buckets=ROW_BUCKETS,
        )
        self.micro_batch_chunks: Any = prom.Histogram(
            "keyed_micro_batch_chunks",
            "Distinct chunks (each from one request) merged into one runner micro-batch.",
            buckets=CHUNK_BUCKETS,
        )
        self.instances: Any = prom.Counter(
            "keyed_instances",
            "Instances by outcome: predicted; answered with an error of their own (per-instance "
            "mode); rejected with their request (4xx); failed with it (5xx).",
            ["outcome"],
        )
        self.instance_errors: Any = prom.Counter(
            "keyed_instance_errors",
            "Instance-level errors by code (missing_feature, wrong_type, model_error, ...).",
            ["code"],
        )
        self.runner_retries: Any = prom.Counter(
            "keyed_runner_retries",
            "Chunk calls to the runner retried after a transient failure, by cause.",
            ["cause"],
        )
        self.key_mismatches: Any = prom.Counter(
            "keyed_key_mismatches",
            "Requests whose runner results did not match the keys sent (must stay 0).",
        )
        self.model_version_mismatches: Any = prom.Counter(
            "keyed_model_version_mismatches",
            "Model version mismatches (must stay 0): blocks a runner refused as sent for "
            "another version (side=runner), requests an entry answered 503 because results "
            "came from another version (side=entry).",
            ["side"],
        )
        self.admissions: Any = prom.Counter(
            "keyed_admissions",
            "Requests past the concurrency limit, by outcome: waited (for a turn, then "
            "served); queue_full and past_deadline (429 at once: the queue is full, or the "
            "wait would pass the request's deadline); expired (503 after waiting until it "
            "could not be answered in time); gave_up (the caller went away while waiting).",
            ["outcome"],
        )
        self.waiting: Any = prom.Gauge(
            "keyed_admission_waiting",
            "Requests waiting for a turn now (past the concurrency limit), all workers.",
            multiprocess_mode="livesum",
        )
        self.capture_dropped: Any = prom.Counter(
            "keyed_capture_dropped",
            "Captured rows (answered instances) not kept, by reason: buffer_full (the "
            "worker's capture buffer was full), max_bytes (KEYED_CAPTURE_MAX_BYTES reached), "
            "write_failed (the file could not be written: an unwritable directory, a full "
            "disk). Answers are never affected.",
            ["reason"],
        )
        self.capture_written: Any = prom.Counter(
            "keyed_capture_rows_written",
            "Captured rows written to Parquet under KEYED_CAPTURE_DIR.",
        )
        self.labels: Any = prom.Counter(
            "keyed_labels",
            "Labels posted to /labels, by outcome: accepted (kept), or the reason refused.",
            ["outcome"],
        )

        # Labelled children resolved once: .labels() costs more than the increment.
        self.predicted = self.instances.labels("predicted")
        self.answered_with_error = self.instances.labels("answered_with_error")
        self.admitted: dict[str, Any] = {}

    def count_admission(self, outcome: str) -> None:
        """What admission (keyed_serving.serving.admission.InFlight) says of a request
        past the concurrency limit."""
        if outcome == "queued":
            self.waiting.inc()
            return
        if outcome in ("waited", "expired", "gave_up"):
            self.waiting.dec()
        if outcome not in self.admitted:  # .labels() costs more than the increment
            self.admitted[outcome] = self.admissions.labels(outcome)
        self.admitted[outcome].inc()

    def count_rejected(self, instances: int, details: Sequence[ErrorDetail]) -> None:
        self.instances.labels("rejected").inc(instances)
        for detail in details:
            self.instance_errors.labels(detail.type).inc()

    def count_answered(
        self,
        predicted: int,
        failures: Sequence[InstanceFailure],
        model_failures: Mapping[int, InstanceError],
    ) -> None:
        self.predicted.inc(predicted)
        if failures or model_failures:
            self.answered_with_error.inc(len(failures) + len(model_failures))
        for failure in failures:
            self.instance_errors.labels(failure.details[0].type).inc()
        for error in model_failures.values():
            self.instance_errors.labels(error.code).inc()


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    return Metrics()
