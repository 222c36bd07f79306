"""Answers compressed where Accept-Encoding asks (issue 19 item 5, the answer half): the
entry in-process through BentoML's ASGI app, and the middleware around small apps."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from support import own_predictions

from keyed_serving.serving.compression import AnswerCompression, chosen_coding
from keyed_serving.settings import Settings

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
}


@pytest.fixture
def client(asgi_client: TestClient) -> TestClient:
    return asgi_client


def instances(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    values = np.round(rng.uniform(0.1, 7.9, (n, len(FEATURES))), 1).tolist()
    return [
        {"key": f"k-{i}", "features": dict(zip(FEATURES, row, strict=True))}
        for i, row in enumerate(values)
    ]


def raw_post(client: TestClient, path: str, accept_encoding: str, **kwargs: Any) -> Any:
    """The answer's bytes as they came over the wire (httpx would decompress them), and
    the answer."""
    headers = {**kwargs.pop("headers", {}), "accept-encoding": accept_encoding}
    with client.stream("POST", path, headers=headers, **kwargs) as response:
        raw = b"".join(response.iter_raw())
    return raw, response


def predict_raw(client: TestClient, sent: list[dict[str, Any]], accept_encoding: str) -> Any:
    return raw_post(
        client,
        "/predict",
        accept_encoding,
        content=json.dumps({"instances": sent}),
        headers={"content-type": "application/json"},
    )


def assert_each_key_has_the_models_prediction(
    answer: dict[str, Any], sent: list[dict[str, Any]], tag: str
) -> None:
    assert [p["key"] for p in answer["predictions"]] == [i["key"] for i in sent]
    got = [p["prediction"] for p in answer["predictions"]]
    assert got == own_predictions(tag, sent)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_an_answer_is_compressed_in_the_coding_the_request_accepts(
    client: TestClient, default_model: str, coding: str
) -> None:
    sent = instances(400)
    raw, response = predict_raw(client, sent, coding)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding
    assert "accept-encoding" in response.headers["vary"].lower()
    assert int(response.headers["content-length"]) == len(raw)
    answer = json.loads(DECOMPRESS[coding](raw))
    assert_each_key_has_the_models_prediction(answer, sent, default_model)
    plain, _ = predict_raw(client, sent, "identity")
    assert len(raw) * 3 < len(plain)
    assert json.loads(plain)["predictions"] == answer["predictions"]


@pytest.mark.parametrize(
    ("accept_encoding", "coding"),
    [
        ("gzip, deflate, br", "gzip"),  # httpx's own, br not served
        ("deflate;q=1.0, gzip;q=0.5", "deflate"),
        ("gzip;q=0, deflate", "deflate"),
        ("br, *", "gzip"),
        ("GZIP", "gzip"),
    ],
)
def test_the_coding_weighed_highest_is_chosen(
    client: TestClient, accept_encoding: str, coding: str
) -> None:
    raw, response = predict_raw(client, instances(200), accept_encoding)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding
    assert len(json.loads(DECOMPRESS[coding](raw))["predictions"]) == 200


@pytest.mark.parametrize(
    "accept_encoding",
    ["", "identity", "gzip;q=0", "gzip;q=0, deflate;q=0", "*;q=0", "br", "identity, gzip;q=0.5"],
)
def test_an_answer_is_plain_where_no_offered_coding_is_accepted(
    client: TestClient, default_model: str, accept_encoding: str
) -> None:
    sent = instances(400)
    raw, response = predict_raw(client, sent, accept_encoding)
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert int(response.headers["content-length"]) == len(raw)
    assert_each_key_has_the_models_prediction(json.loads(raw), sent, default_model)


def test_a_small_answer_is_plain(client: TestClient, default_model: str) -> None:
    sent = instances(1)
    raw, response = predict_raw(client, sent, "gzip, deflate")
    assert response.status_code == 200
    assert len(raw) < Settings().answer_compression_min_bytes
    assert "content-encoding" not in response.headers
    assert_each_key_has_the_models_prediction(json.loads(raw), sent, default_model)


def test_a_v2_answer_is_compressed_whole_and_its_header_length_counts_plain_bytes(
    client: TestClient, default_model: str
) -> None:
    sent = instances(300)
    name = default_model.split(":")[0]
    body = {
        "inputs": [
            {"name": "key", "datatype": "BYTES", "shape": [300], "data": [i["key"] for i in sent]},
            *(
                {
                    "name": f,
                    "datatype": "FP64",
                    "shape": [300],
                    "data": [i["features"][f] for i in sent],
                }
                for f in FEATURES
            ),
        ],
        "outputs": [
            {"name": "key", "parameters": {"binary_data": False}},
            {"name": "prediction", "parameters": {"binary_data": True}},
        ],
    }
    raw, response = raw_post(client, f"/v2/models/{name}/infer", "gzip", json=body)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    plain = gzip.decompress(raw)
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(plain[:header_length])
    outputs = {o["name"]: o for o in header["outputs"]}
    assert outputs["key"]["data"] == [i["key"] for i in sent]
    size = outputs["prediction"]["parameters"]["binary_data_size"]
    assert len(plain) == header_length + size
    labels, at = [], header_length
    while at < len(plain):  # BYTES: 4-byte little-endian length, then the bytes
        length = int.from_bytes(plain[at : at + 4], "little")
        labels.append(plain[at + 4 : at + 4 + length].decode())
        at += 4 + length
    assert labels == own_predictions(default_model, sent)


@pytest.mark.parametrize(("suffix", "compressed"), [(".csv", True), (".parquet", False)])
def test_a_scored_file_downloads_whole_with_gzip_accepted(
    client: TestClient, default_model: str, suffix: str, compressed: bool
) -> None:
    """/predict_file's FileResponse streams the file in 64 KiB parts: each is compressed
    as it goes. A Parquet file is compressed already and goes as it is."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (5000, 4)), 1), columns=FEATURES)
    frame.insert(0, "id", [f"00{i}" for i in range(len(frame))])
    buffer = io.BytesIO()
    frame.to_csv(buffer, index=False) if suffix == ".csv" else frame.to_parquet(buffer)
    raw, response = raw_post(
        client,
        "/predict_file",
        "gzip",
        files={"file": (f"table{suffix}", buffer.getvalue())},
        data={"key": "id"},
    )
    assert response.status_code == 200, raw[:300]
    assert response.headers["x-rows"] == str(len(frame))
    if compressed:
        assert response.headers["content-encoding"] == "gzip"
        assert "content-length" not in response.headers
        assert response.headers["etag"].startswith("W/")
        content = gzip.decompress(raw)
        assert len(content) > 2 * 64 * 1024  # streamed in several parts
        scored = pd.read_csv(io.BytesIO(content), dtype={"id": str})
    else:
        assert "content-encoding" not in response.headers
        scored = pd.read_parquet(io.BytesIO(raw))
    assert scored["id"].tolist() == frame["id"].tolist()
    assert scored["prediction"].tolist() == own_predictions(default_model, frame)


# ---- the middleware around small apps ----------------------------------------------------


def small_app(response: Callable[[Request], Response], **options: Any) -> TestClient:
    async def endpoint(request: Request) -> Response:
        return response(request)

    app = Starlette(routes=[Route("/", endpoint, methods=["GET", "HEAD", "POST"])])
    wrapped = AnswerCompression(app, **{"minimum_bytes": 100, **options})
    return TestClient(wrapped)


BIG = b'{"value": "' + b"x" * 5000 + b'"}'


@pytest.mark.parametrize(
    "response",
    [
        lambda _: Response(gzip.compress(BIG), headers={"content-encoding": "gzip"}),
        lambda _: Response(status_code=204),
        lambda _: Response(status_code=304, headers={"etag": '"a"'}),
        lambda _: Response(BIG, status_code=206, media_type="application/json"),
        lambda _: Response(b"\x89PNG" + BIG, media_type="image/png"),
    ],
    ids=["already-encoded", "204", "304", "206", "image"],
)
def test_answers_that_must_not_or_need_not_be_compressed_go_as_they_are(
    response: Callable[[Request], Response],
) -> None:
    expected = response(None)  # type: ignore[arg-type]
    with small_app(response).stream("GET", "/", headers={"accept-encoding": "gzip"}) as got:
        raw = b"".join(got.iter_raw())
    assert got.status_code == expected.status_code
    assert got.headers.get("content-encoding") == expected.headers.get("content-encoding")
    assert raw == expected.body


def test_a_head_answer_and_a_disabled_middleware_leave_the_answer_alone() -> None:
    def answer(_: Request) -> Response:
        return Response(BIG, media_type="application/json")

    head = small_app(answer).head("/", headers={"accept-encoding": "gzip"})
    assert head.status_code == 200 and "content-encoding" not in head.headers
    assert head.headers["content-length"] == str(len(BIG))
    off = small_app(answer, enabled=False).get("/", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in off.headers and off.content == BIG


def test_a_streamed_file_is_compressed_part_by_part_and_its_etag_made_weak(tmp_path: Any) -> None:
    path = tmp_path / "scored.csv"
    path.write_text("".join(f"k{i},{i % 3}\n" for i in range(60_000)))
    client = small_app(lambda _: FileResponse(path, media_type="text/csv"))
    with client.stream("GET", "/", headers={"accept-encoding": "deflate"}) as got:
        parts = list(got.iter_raw())
    assert got.headers["content-encoding"] == "deflate"
    assert got.headers["etag"].startswith('W/"')
    assert zlib.decompress(b"".join(parts)) == path.read_bytes()


def test_a_text_answer_below_the_minimum_is_plain_and_says_vary() -> None:
    got = small_app(lambda _: PlainTextResponse("ok")).get("/", headers={"accept-encoding": "gzip"})
    assert got.text == "ok" and "content-encoding" not in got.headers
    assert got.headers["vary"] == "Accept-Encoding"


@pytest.mark.parametrize(
    ("accept_encoding", "chosen"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate", "gzip"),
        ("deflate, gzip", "gzip"),  # alike: the server's preference
        ("gzip;q=0.2, deflate;q=0.8", "deflate"),
        ("gzip ; q=0.000", None),
        ("gzip;q=x", None),
        ("*", "gzip"),
        ("*;q=0.5, gzip;q=0", "deflate"),
        ("identity;q=1, *;q=0.5", None),
        ("identity;q=0.5, gzip", "gzip"),
        ("br, zstd", None),
    ],
)
def test_the_coding_follows_the_weights_of_accept_encoding(
    accept_encoding: str | None, chosen: str | None
) -> None:
    assert chosen_coding(accept_encoding) == chosen
