"""One typed settings object, read from the environment (``KEYED_*`` and ``MODEL_TAG``).

Service-level knobs that BentoML owns (workers, traffic limits) stay in BentoML's own
configuration; these are the ones this project adds.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "iris_classifier"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYED_", frozen=True, protected_namespaces=())

    model_tag: str = Field(
        default=f"{DEFAULT_MODEL_NAME}:latest",
        validation_alias=AliasChoices("MODEL_TAG", "KEYED_MODEL_TAG"),
        description="The BentoML model served, name:version (or name:latest).",
    )
    # Runner micro-batching. See README "Batching defaults" for the measurement behind them.
    max_batch_size: int = Field(default=1000, gt=1)
    max_latency_ms: int = Field(default=2000, gt=0)
    # Rows per chunk the entry sends to the runner. Smaller than max_batch_size so that a
    # big request spreads over micro-batches without starving concurrent small ones.
    chunk_rows: int = Field(default=500, ge=1)
    max_instances: int = Field(default=100_000, ge=1)
    # The whole request (all chunks, all retries) must finish within this, or 503.
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
    # /predict_file uploads are streamed to disk, not held in memory: a larger bound.
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    file_batch_rows: int = Field(default=20_000, ge=1)
    api_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("API_TOKEN", "KEYED_API_TOKEN"),
        repr=False,
        description="When set, every API asks for Authorization: Bearer <token>.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
