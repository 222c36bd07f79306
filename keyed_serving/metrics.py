"""Prometheus metrics this project adds to BentoML's own (served on ``/metrics``).

``prometheus_client`` is imported on first use, not at import time: BentoML workers set
``PROMETHEUS_MULTIPROC_DIR`` after importing the service module, and a client imported
before that never writes where ``/metrics`` reads (see ``bentoml/metrics.py``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
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
            "Instances by outcome: predicted, rejected (4xx), failed (5xx).",
            ["outcome"],
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


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    return Metrics()
