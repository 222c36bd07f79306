"""BentoML's own traffic answers (429 at traffic.max_concurrency, 504 at traffic.timeout)
carry Retry-After and X-Request-ID, like every answer of the entry.

A small service with tight traffic limits, its layers stacked as service.py stacks the
entry's, served in-process through BentoML's own ASGI app.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
import pytest
from starlette.testclient import TestClient

from keyed_serving.serving.http import AnswerStamp, EntryGate, add_outermost

entered = threading.Event()
never = threading.Event()


# No metrics: BentoML registers its Prometheus series once per process, and the
# session's own entry app (conftest.py) has them.
@bentoml.service(traffic={"timeout": 1, "max_concurrency": 1}, metrics={"enabled": False})
class Stalled:
    @bentoml.api
    def wait(self) -> dict[str, Any]:
        entered.set()
        never.wait(timeout=30)  # outlasts the traffic timeout; released at the test's end
        return {}


add_outermost(Stalled, AnswerStamp, retry_after_s=3)


@pytest.fixture(scope="module")
def service(default_model: str) -> Any:
    # Imported once the session's model is in the store: service.py resolves it at import.
    import service

    Stalled.add_asgi_middleware(EntryGate, **{**service.GATE, "api_token": None})  # type: ignore[attr-defined]
    return service


def test_bentomls_own_429_and_504_carry_retry_after_and_a_request_id(service: Any) -> None:
    with TestClient(Stalled.to_asgi()) as client, ThreadPoolExecutor(1) as pool:
        try:
            stalled = pool.submit(client.post, "/wait", json={}, headers={"x-request-id": "one"})
            assert entered.wait(timeout=30)
            refused = client.post("/wait", json={}, headers={"x-request-id": "two"})
            timed_out = stalled.result(timeout=60)
        finally:
            never.set()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3" and refused.headers["x-request-id"] == "two"
    assert timed_out.status_code == 504
    assert timed_out.headers["retry-after"] == "3" and timed_out.headers["x-request-id"] == "one"


def test_the_entry_is_served_inside_the_stamp(service: Any) -> None:
    assert isinstance(service.KeyedPrediction.to_asgi(), AnswerStamp)
