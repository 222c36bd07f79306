"""POST /labels on a real server with capture on, as a stranger's fuzzer writes to it: junk
bodies of every kind answered 4xx naming the fault, or 200 with per-label refusals, never
a 500; the gate's token guards it; and schemathesis, from the served document, finds no
5xx and no answer the document does not describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance
from support import Server

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(default_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("capture")
    running = Server(
        MODEL_TAG=default_model,
        KEYED_CAPTURE_DIR=str(root),
        KEYED_CAPTURE_FLUSH_S="0.5",
        KEYED_API_TOKEN=TOKEN,
    )
    running.capture = root  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()


def post(server: Server, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        server.url + "/labels",
        content=content,
        headers={"Content-Type": "application/json", **AUTH, **(headers or {})},
        timeout=60,
    )


ONE = '{"key": 1, "label": "setosa"}'
JUNK: list[tuple[str, bytes]] = [
    ("not json", b"labels please"),
    ("empty body", b""),
    ("a list", b"[]"),
    ("null labels", b'{"labels": null}'),
    ("nested labels", b'{"labels": {"labels": [' + ONE.encode() + b"]}}"),
    ("deep nesting", b'{"labels": [' + b"[" * 5000 + b"]" * 5000 + b"]}"),
    ("a huge integer key", b'{"labels": [{"key": ' + b"9" * 400 + b', "label": "x"}]}'),
    ("a huge integer", b'{"labels": [{"key": 1, "label": ' + b"9" * 5000 + b"}]}"),
    ("lone surrogate key", b'{"labels": [{"key": "\\ud800", "label": "setosa"}]}'),
    ("lone surrogate label", b'{"labels": [{"key": 1, "label": "\\udfff"}]}'),
    ("lone surrogate id", b'{"labels": [{"key": 1, "label": "x", "request_id": "\\ud800"}]}'),
    ("too many", b'{"labels": [' + b",".join([ONE.encode()] * 100_001) + b"]}"),
    ("extra top field", b'{"labels": [], "model": "x"}'),
]
PER_LABEL: list[tuple[str, str, str]] = [
    ("a bool key", '{"key": true, "label": "setosa"}', "invalid_key"),
    ("a huge exponent", '{"key": 1e999, "label": 1e999}', "invalid_key"),
    ("NaN", '{"key": NaN, "label": NaN, "time": NaN}', "invalid_key"),
    ("a NaN label", '{"key": 2, "label": NaN}', "invalid_label"),
    ("a key of 300 characters", '{"key": "' + "k" * 300 + '", "label": "setosa"}', "invalid_key"),
    ("an object label", '{"key": 1, "label": {"a": [1, {"b": 2}]}}', "invalid_label"),
    ("a null label", '{"key": 1, "label": null}', "invalid_label"),
    ("month 13", '{"key": 1, "label": "setosa", "time": "2026-13-45"}', "invalid_time"),
    (
        "a time before year 1",
        '{"key": 1, "label": "x", "time": "0001-01-01T00:00+01:00"}',
        "invalid_time",
    ),
    ("a time as a number", '{"key": 1, "label": "setosa", "time": 1765000000}', "invalid_time"),
    (
        "a request id of 300",
        '{"key": 1, "label": "x", "request_id": "' + "r" * 300 + '"}',
        "invalid_request_id",
    ),
    ("a bool request id", '{"key": 1, "label": "x", "request_id": false}', "invalid_request_id"),
    ("an item that is a list", "[1, 2]", "invalid_item"),
    ("an extra field", '{"key": 1, "label": "x", "when": "now"}', "invalid_item"),
]


@pytest.mark.parametrize(("what", "body"), JUNK, ids=[what for what, _ in JUNK])
def test_a_junk_body_is_a_4xx_naming_what_is_wrong(server: Server, what: str, body: bytes) -> None:
    response = post(server, body)
    assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
    said = response.json()
    assert said["error"], said


@pytest.mark.parametrize(("what", "item", "reason"), PER_LABEL, ids=[w for w, _, _ in PER_LABEL])
def test_a_bad_label_is_refused_by_reason_beside_a_good_one(
    server: Server, what: str, item: str, reason: str
) -> None:
    response = post(server, ('{"labels": [' + ONE + ", " + item + "]}").encode())
    assert response.status_code == 200, (what, response.text[:300])
    said = response.json()
    assert said["accepted"] == 1 and said["refused"] == {reason: 1}, said
    assert said["errors"][0]["index"] == 1 and said["errors"][0]["message"].startswith("labels[1]")


def test_an_empty_list_accepts_nothing(server: Server) -> None:
    response = post(server, b'{"labels": []}')
    assert response.status_code == 200
    assert response.json() == {"accepted": 0, "refused": {}, "errors": []}


def test_the_gates_token_guards_labels(server: Server) -> None:
    body = ('{"labels": [' + ONE + "]}").encode()
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        assert post(server, body, headers).status_code == 401
    assert post(server, body).status_code == 200


def test_labels_hold_under_schemathesis(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", headers=AUTH)
    [operation] = [
        result.ok() for result in schema.get_all_operations() if result.ok().path == "/labels"
    ]
    checks = [
        schemathesis.checks.not_a_server_error,
        status_code_conformance,
        content_type_conformance,
    ]

    @settings(
        max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=operation.as_strategy())
    def holds(case: Any) -> None:
        case.call_and_validate(base_url=server.url, headers=AUTH, checks=checks)

    holds()
    written = list(Path(server.capture).rglob("*.parquet"))  # type: ignore[attr-defined]
    assert written  # the valid bodies it sent were kept


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Encoding": "gzip"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/json; charset=utf-8"},
    ],
)
def test_labels_from_a_client_that_compresses_or_names_another_content_type(
    server: Server, headers: dict[str, str]
) -> None:
    import gzip

    body = ('{"labels": [' + ONE + "]}").encode()
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.compress(body)
    response = post(server, body, headers)
    assert response.status_code in (200, 415), response.text
    if response.status_code == 200:
        assert response.json()["accepted"] == 1
    else:
        assert response.json()["error"]


def test_the_readmes_curl_example_is_answered_as_the_readme_says(server: Server) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### 2. Send the labels") :]
    curl = section[: section.index("```", section.index("```sh") + 5)]
    body = curl[curl.index("-d '") + 4 : curl.rindex("'")]
    response = post(server, body.encode())
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "refused": {}, "errors": []}
