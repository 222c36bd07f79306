"""The entry's gate around a stand-in app: auth, limits, content types, request ids."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyed_serving.http import EntryGate

TOKEN = "s3cret-token-value"


def app_behind_gate(**options: Any) -> tuple[Any, asyncio.Event]:
    release = asyncio.Event()

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        if request.query_params.get("wait"):
            await release.wait()
        if request.query_params.get("overloaded"):
            return JSONResponse({"error": "busy"}, status_code=503)
        return JSONResponse({"bytes": len(body)})

    async def probe(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    inner = Starlette(
        routes=[
            Route("/predict", echo, methods=["POST", "GET"]),
            Route("/readyz", probe),
            Route("/metrics", probe),
        ]
    )
    settings = {
        "api_token": None,
        "max_body_bytes": 1000,
        "max_concurrency": 4,
        "retry_after_s": 2,
        **options,
    }
    return EntryGate(inner, **settings), release


async def call(app: Any, method: str = "POST", path: str = "/predict", **kwargs: Any) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
        return await client.request(method, path, **kwargs)


def run(app: Any, *args: Any, **kwargs: Any) -> httpx.Response:
    return asyncio.run(call(app, *args, **kwargs))


def test_with_a_token_set_no_api_answers_without_it() -> None:
    app, _ = app_behind_gate(api_token=TOKEN)
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": TOKEN},
        {"authorization": f"bearer {TOKEN}x"},
    ):
        response = run(app, json={}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text
    ok = run(app, json={}, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_probes_and_metrics_stay_open_with_a_token_set() -> None:
    app, _ = app_behind_gate(api_token=TOKEN)
    assert run(app, "GET", "/readyz").status_code == 200
    assert run(app, "GET", "/metrics").status_code == 200


def test_a_body_over_the_limit_gets_413_whether_declared_or_streamed() -> None:
    app, _ = app_behind_gate()
    assert run(
        app, content=b"{" + b" " * 998 + b"}", headers={"content-type": "application/json"}
    ).json() == {"bytes": 1000}
    declared = run(app, content=b"x" * 1001, headers={"content-type": "application/json"})
    assert declared.status_code == 413

    async def chunks() -> Any:
        for _ in range(5):
            yield b" " * 300

    streamed = run(app, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "split" in streamed.json()["error"]


@pytest.mark.parametrize(
    "media_type",
    ["text/plain", "application/vnd.bentoml+pickle", "application/x-www-form-urlencoded", None],
)
def test_bodies_that_are_not_json_get_415(media_type: str | None) -> None:
    app, _ = app_behind_gate()
    headers = {"content-type": media_type} if media_type else {}
    response = run(app, content=b'{"instances": []}', headers=headers)
    assert response.status_code == 415


def test_json_with_a_charset_and_bodyless_gets_pass() -> None:
    app, _ = app_behind_gate()
    assert (
        run(
            app, content=b"{}", headers={"content-type": "application/json; charset=utf-8"}
        ).status_code
        == 200
    )
    assert run(app, "GET").status_code == 200


def test_past_the_concurrency_limit_requests_get_429_with_retry_after() -> None:
    app, release = app_behind_gate(max_concurrency=3)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        held = [asyncio.create_task(call(app, params={"wait": 1}, json={})) for _ in range(3)]
        while app.in_flight < 3:  # the three are inside, waiting
            await asyncio.sleep(0)
        refused = await call(app, json={})
        probe = await call(app, "GET", "/readyz")
        release.set()
        return list(await asyncio.gather(*held)), refused, probe

    held, refused, probe = asyncio.run(scenario())
    assert [r.status_code for r in held] == [200, 200, 200]
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    assert probe.status_code == 200
    assert app.in_flight == 0


def test_every_overload_answer_carries_retry_after() -> None:
    app, _ = app_behind_gate()
    response = run(app, params={"overloaded": 1}, json={})
    assert response.status_code == 503 and response.headers["retry-after"] == "2"


def test_every_answer_carries_a_request_id_and_a_sane_one_is_kept() -> None:
    app, _ = app_behind_gate(api_token=TOKEN)
    kept = run(app, json={}, headers={"x-request-id": "client-42.a_b"})
    assert kept.headers["x-request-id"] == "client-42.a_b"
    replaced = run(app, json={}, headers={"x-request-id": "bad id\r\nx"})
    assert (
        replaced.headers["x-request-id"] != "bad id\r\nx"
        and len(replaced.headers["x-request-id"]) == 16
    )
    assert run(app, "GET", "/readyz").headers["x-request-id"]


def test_a_body_that_is_not_json_is_refused_before_it_is_read() -> None:
    app, _ = app_behind_gate(max_body_bytes=10**9)
    pulled: list[int] = []

    async def chunks() -> Any:
        for n in range(100):
            pulled.append(n)
            yield b"\x80" * 10_000

    response = run(app, content=chunks(), headers={"content-type": "application/octet-stream"})
    assert response.status_code == 415
    assert len(pulled) < 100
