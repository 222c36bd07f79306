"""One typed settings object, read from the environment (``KEYED_*`` and ``MODEL_TAG``).

Service-level knobs that BentoML owns (workers, traffic limits) stay in BentoML's own
configuration; these are the ones this project adds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "iris_classifier"
DEFAULT_MODEL_TAG = f"{DEFAULT_MODEL_NAME}:latest"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYED_", frozen=True, protected_namespaces=())

    # Unset: a bento serves the model it carries, a checkout DEFAULT_MODEL_TAG (see
    # keyed_serving.model.store.served_model_tag).
    model_tag: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MODEL_TAG", "KEYED_MODEL_TAG"),
        description="The BentoML model served, name:version (or name:latest); unset, the "
        "model a bento carries, else iris_classifier:latest.",
    )
    # Processes per service. See README "Batching defaults" for the sweep behind them.
    entry_workers: int = Field(default=1, ge=1)
    runner_workers: int = Field(default=1, ge=1)
    # Off: no coalescing in the entry, and the runner predicts each call on its own (the
    # baseline the benchmark compares batching against).
    batching: bool = True
    # Runner micro-batching: blocks (request chunks) per micro-batch, and the latency bound
    # past which BentoML's dispatcher sheds a call (503, retried by the entry). 256 blocks
    # hold every request two entry workers work on at once (max_concurrency each), so a
    # coalesced call is never split into micro-batches run one after the other: at 64, the
    # goodput at 1,024 connections was 82% of the 64-connection figure (bench/sweep.md).
    max_batch_size: int = Field(default=256, gt=1)
    max_latency_ms: int = Field(default=2000, gt=0)
    # Rows per block. The model's cost is mostly per call, so blocks are large; a bigger
    # request is cut so that its blocks spread over runner workers.
    chunk_rows: int = Field(default=5000, ge=1)
    # Entry-side coalescing: runner calls in flight per entry worker, rows per call.
    runner_calls: int = Field(default=2, ge=1)
    coalesce_rows: int = Field(default=10_000, ge=1)
    # While a call is in flight, a new one waits this long to gather more requests (it
    # would wait behind the running one at the runner anyway). 0: send at once.
    coalesce_linger_ms: float = Field(default=5.0, ge=0)
    # When the model raises on a micro-batch, the rows it cannot take are searched for by
    # bisection, at most this many model calls and seconds per micro-batch (other callers'
    # blocks wait behind it); rows not told apart by then are answered with a model_error.
    # Measured with a strict churn forest (~5 ms a call): 20 bad rows scattered in 10,000
    # took 375 calls (1.9 s); 200 would take 2,335 calls (12 s) unbounded.
    isolation_max_calls: int = Field(default=512, ge=0)
    isolation_max_s: float = Field(default=5.0, ge=0)
    # Threads a forest predicts a large micro-batch with (keyed_serving.model.predicting: rows split
    # between them, answers identical). 2: the second core is the entry's, idle while one
    # large request is predicted.
    model_threads: int = Field(default=2, ge=1)
    # Serve a model pickled with another major.minor version of scikit-learn (or of another
    # package it holds) than this environment's: refused at start unless this is set.
    allow_version_mismatch: bool = False
    # One log line per request costs about a tenth of a small request's CPU.
    access_log: bool = False
    max_instances: int = Field(default=100_000, ge=1)
    # The whole request, from the moment it reaches the gate (its wait for a turn, all its
    # chunks and retries), must finish within this, or 503. A gRPC caller's own deadline
    # shortens it.
    request_deadline_s: float = Field(default=30.0, gt=0)
    retry_initial_backoff_s: float = Field(default=0.05, gt=0)
    retry_max_backoff_s: float = Field(default=1.0, gt=0)
    retry_after_s: int = Field(default=1, ge=1)
    # On SIGTERM the runner serves on until the entry has exited, at most this long: just
    # below the 30 s after which circus (bentoml serve) kills a worker that has not stopped.
    drain_max_s: float = Field(default=28.0, gt=0)
    # The entry's own bounds (per worker). See README "Limits" for how they were chosen.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_concurrency: int = Field(default=128, ge=1)
    # Requests past max_concurrency wait for a turn, first come first served, up to this
    # many per worker (HTTP and gRPC together), rather than being refused at once: 429 only
    # once it is full or where the wait would pass the request's deadline (see
    # keyed_serving.serving.admission). A waiting HTTP request holds its headers and at most
    # the server's read buffer of its body (64 KiB); a waiting gRPC message holds its bytes,
    # within body_budget_bytes.
    max_queue: int = Field(default=1024, ge=0)
    # JSON values (array items and containers) per body: 64 MiB of `{},{},...` decoded
    # into 1.5 GB of dicts, 64 MiB of small numbers into 0.5-0.65 GB (measured); this
    # bounds a body's decoded size whatever its bytes. 100,000 instances of 36 features.
    max_body_values: int = Field(default=4_000_000, ge=1000)
    # Request bodies held in memory at once (per worker): past it 429 + Retry-After. An
    # admitted body costs about 7 times its bytes at its peak (decoded, validated,
    # answered): with 64 MiB the entry peaked at 525-668 MB and the whole server at
    # 1.0-1.2 GB under 8 concurrent maximum-size bodies; unbounded, at 1.9 and 2.4 GB,
    # past the Deployment's 2 GiB (bench/memory_burst.md).
    body_budget_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # /predict_file uploads are streamed to disk, not held in memory: a larger bound.
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    # /predict_file_task/submit uploads are held in memory by BentoML's task store (with a
    # base64 and a JSON copy), and /get and /retry load them again: a smaller bound, and
    # few tasks at once.
    max_task_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_tasks: int = Field(default=2, ge=1)
    file_batch_rows: int = Field(default=20_000, ge=1)
    # The Open Inference Protocol over gRPC beside HTTP, on this port (every entry worker
    # listens on it, SO_REUSEPORT); unset, no gRPC. The address: the HTTP server's host,
    # unless this sets another.
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    grpc_host: str | None = None
    # Answers in gzip or deflate where the request's Accept-Encoding asks (as Triton does),
    # if at least this long. See bench/compression.md for the default and its cost.
    answer_compression: bool = True
    answer_compression_min_bytes: int = Field(default=1024, ge=0)
    # Capture of every answered instance, by key, to Parquet under this directory (see
    # keyed_serving.capture): off when unset. Written off the request path from a bounded
    # buffer per worker, every capture_flush_s and on SIGTERM; a SIGKILL loses at most one
    # interval. Rows past capture_buffer_rows waiting, or past capture_max_bytes on disk, or
    # that cannot be written are dropped and counted (keyed_capture_dropped_total), never
    # failing or slowing an answer. capture_sample keeps that share of keys, chosen by a
    # hash of the key (a key is captured always or never).
    capture_dir: Path | None = None
    capture_features: bool = True
    capture_flush_s: float = Field(default=5.0, gt=0)
    capture_buffer_rows: int = Field(default=500_000, ge=1)
    capture_max_bytes: int | None = Field(default=None, ge=0)
    capture_sample: float = Field(default=1.0, ge=0, le=1)
    api_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("API_TOKEN", "KEYED_API_TOKEN"),
        repr=False,
        description="When set, every API asks for Authorization: Bearer <token>.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
