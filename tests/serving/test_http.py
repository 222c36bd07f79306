"""The entry's HTTP surface in-process, through BentoML's own ASGI app (no real server)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

GOOD = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}


@pytest.fixture
def client(asgi_client: TestClient) -> TestClient:
    return asgi_client


def post(client: TestClient, body: Any, **kwargs: Any) -> Any:
    return client.post(
        "/predict",
        content=json.dumps(body),
        **{"headers": {"content-type": "application/json"}, **kwargs},
    )


def test_predict_answers_each_key_with_its_prediction(client: TestClient) -> None:
    body = {
        "instances": [
            {"key": "c-001", "features": GOOD},
            {"key": 42, "features": {**GOOD, "petal_length_cm": 5.9, "petal_width_cm": None}},
        ]
    }
    response = post(client, body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["model"].startswith("iris_classifier:")
    assert [p["key"] for p in answer["predictions"]] == ["c-001", 42]
    assert answer["predictions"][0]["prediction"] == "setosa"
    assert set(answer["predictions"][0]) == {"key", "prediction", "probabilities"}
    assert response.headers["x-request-id"]


def test_model_info_answers_on_post_and_on_get(client: TestClient) -> None:
    by_post, by_get = client.post("/model_info", json={}), client.get("/model_info")
    assert by_post.status_code == by_get.status_code == 200
    assert by_post.json() == by_get.json()
    assert [f["name"] for f in by_get.json()["features"]] == list(GOOD)


@pytest.mark.parametrize(
    ("body", "must_name"),
    [
        (
            {"instances": [{"key": "a", "features": GOOD}, {"key": "a", "features": GOOD}]},
            ["'a'", "duplicate_key"],
        ),
        (
            {"instances": [{"key": "k1", "features": {**GOOD, "petal_width_cm": "wide"}}]},
            ["'k1'", "petal_width_cm", "wrong_type"],
        ),
        (
            {"instances": [{"key": "k2", "features": {"sepal_length_cm": 1.0}}]},
            ["'k2'", "sepal_width_cm", "missing_feature"],
        ),
        (
            {"instances": [{"key": 9, "features": {**GOOD, "colour": "blue"}}]},
            ["9", "colour", "unknown_feature"],
        ),
        (
            {"instances": [{"key": "k3", "features": {**GOOD, "sepal_width_cm": [1]}}]},
            ["'k3'", "sepal_width_cm"],
        ),
        ({"instances": [{"features": GOOD}]}, ["key", "missing_key"]),
        ({"instances": [{"key": "", "features": GOOD}]}, ["key", "invalid_key"]),
        ({"instances": []}, ["empty_instances"]),
        ({"rows": []}, ["instances"]),
        ([1, 2], ["JSON object"]),
        ({"instances": 5}, ["instances must be a list"]),
        ({"keys": "abc", "columns": {}}, ["keys must be a list"]),
    ],
)
def test_bad_input_gets_400_naming_the_key_and_field(
    client: TestClient, body: Any, must_name: list[str]
) -> None:
    response = post(client, body)
    assert response.status_code == 400
    text = response.text
    for word in must_name:
        assert word in text, f"{word!r} not in {text}"
    assert "error" in response.json()


def test_a_json_null_body_gets_400_asking_for_an_object(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b"null", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON object" in response.text


def test_malformed_json_gets_400(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b'{"instances": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "json_invalid" in response.text


def test_non_finite_numbers_are_refused_by_key(client: TestClient) -> None:
    # Python's JSON writes NaN; a strict client would not, but a careless one might.
    raw = '{"instances": [{"key": "n", "features": {"sepal_length_cm": NaN, '
    raw += '"sepal_width_cm": 1, "petal_length_cm": 1, "petal_width_cm": 1}}]}'
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "'n'" in response.text and "sepal_length_cm" in response.text


def test_more_instances_than_the_limit_are_refused(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    monkeypatch.setattr(
        service, "settings", service.settings.model_copy(update={"max_instances": 3})
    )
    body = {"instances": [{"key": i, "features": GOOD} for i in range(4)]}
    response = post(client, body)
    assert response.status_code == 400 and "too_many_instances" in response.text


def test_pickle_bodies_are_refused_on_the_public_entry(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=b"\x80\x04N.",
        headers={"content-type": "application/vnd.bentoml+pickle"},
    )
    assert response.status_code == 415


def test_bodies_that_are_not_json_are_refused(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b'{"instances": []}', headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_every_answer_carries_a_request_id(client: TestClient) -> None:
    ok = post(client, {"instances": [{"key": 1, "features": GOOD}]})
    bad = post(client, {"instances": []})
    assert ok.headers["x-request-id"] and bad.headers["x-request-id"]
    assert ok.headers["x-request-id"] != bad.headers["x-request-id"]


def test_per_instance_errors_answer_every_key_with_200(client: TestClient) -> None:
    body = {
        "errors": "per_instance",
        "instances": [
            {"key": "good", "features": GOOD},
            {"key": "list", "features": {**GOOD, "sepal_width_cm": [1, 2]}},
            {"key": "huge", "features": {**GOOD, "petal_width_cm": 1e308}},
        ],
    }
    response = post(client, body)
    assert response.status_code == 200
    answer = response.json()
    assert [e["key"] for e in answer["predictions"]] == ["good", "list", "huge"]
    assert answer["predictions"][0]["prediction"] == "setosa"
    assert answer["predictions"][1]["error"]["code"] == "wrong_type"
    assert answer["predictions"][2]["error"]["code"] == "out_of_range"
    assert answer["summary"] == {"received": 3, "predicted": 1, "failed": 2}


def test_an_unknown_error_mode_is_refused(client: TestClient) -> None:
    response = post(client, {"errors": "ignore", "instances": [{"key": 1, "features": GOOD}]})
    assert response.status_code == 400 and "errors" in response.text


@pytest.mark.parametrize("path", ["/predict", "/v2/models/iris_classifier/infer"])
def test_the_lean_route_answers_as_bentomls_api_does(client: TestClient, path: str) -> None:
    import service

    if path == "/predict":
        body: Any = {"keys": ["a", 7], "columns": {k: [v, None] for k, v in GOOD.items()}}
    else:
        tensors = [{"name": "key", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]
        tensors += [
            {"name": k, "datatype": "FP64", "shape": [2], "data": [v, v]} for k, v in GOOD.items()
        ]
        body = {"id": "r1", "inputs": tensors}
    lean = client.post(path, json=body)
    service.ENTRY.enabled = False
    try:
        through_bentoml = client.post(path, json=body)
    finally:
        service.ENTRY.enabled = True
    assert lean.status_code == through_bentoml.status_code == 200
    assert lean.content == through_bentoml.content
    # BentoML's API wrapper names itself in a Server header: the lean route was not it.
    assert through_bentoml.headers["server"].startswith("BentoML")
    assert "server" not in lean.headers
    assert lean.headers["x-request-id"]


def test_an_unexpected_error_on_the_lean_route_is_a_json_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    async def broken(raw: bytes) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(service.ENTRY.instance, "predict_raw", broken)
    response = client.post("/predict", json={"instances": [{"key": 1, "features": GOOD}]})
    assert response.status_code == 500
    assert "internal error" in response.json()["error"]


def test_a_v2_body_of_another_media_type_is_refused_naming_those_it_takes(
    client: TestClient,
) -> None:
    response = client.post(
        "/v2/models/iris_classifier/infer", content=b"x", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json or application/octet-stream" in response.json()["error"]


def test_the_v2_health_routes_answer_the_protocols_json(client: TestClient) -> None:
    """The Open Inference Protocol's Server Live, Server Ready and Model Ready responses are
    JSON; they were BentoML's text/plain "\\n", on which the KServe SDK's is_server_live()
    raised (issue 19 item 3)."""
    name = client.get("/v2/models/iris_classifier").json()["name"]
    for path, body in (
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        (f"/v2/models/{name}/ready", {"name": name, "ready": True}),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "application/json", path
        assert response.json() == body, path


def test_head_on_the_v2_get_routes_answers_as_get_without_a_body(client: TestClient) -> None:
    """HEAD was a 404 on every V2 route, while /livez and /readyz answer it (issue 19 item
    4)."""
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/iris_classifier",
        "/v2/models/iris_classifier/ready",
    ):
        response = client.head(path)
        assert response.status_code == 200, path
        assert response.content == b"", path
    assert client.head("/v2/models/nope").status_code == 404


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "path", ["/v2/repository/index", "/v2/models/iris_classifier/stats", "/v2/nothing"]
)
def test_an_unknown_v2_route_is_a_404_in_the_v2_error_shape(
    client: TestClient, method: str, path: str
) -> None:
    """They answered BentoML's text/plain 404 (issue 19 item 9)."""
    response = client.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    assert path in response.json()["error"]


def test_an_error_in_the_gate_is_answered_500_at_once_not_held_until_the_timeout(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BentoML's timeout middleware waits for the first message sent, not for the app to
    end: an exception below it before an answer started held the client for the whole
    traffic timeout (35 s) and then left it without an answer (a superscript digit in
    Inference-Header-Content-Length did it, issue 19's fuzz)."""
    import keyed_serving.serving.http as http

    def broken(body: bytes, limit: int) -> bool:
        raise RuntimeError("a bug in the gate")

    monkeypatch.setattr(http, "_too_many_values", broken)
    response = post(client, {"instances": []})
    assert response.status_code == 500
    assert "internal error" in response.json()["error"]
    assert "x-request-id" in response.headers
