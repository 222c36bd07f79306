"""Compressed V2 answers against a real `bentoml serve`: tritonclient's
response_compression_algorithm, as Triton answers it (issue 19 item 5, the answer half)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from support import own_predictions, served

pytestmark = pytest.mark.slow
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
DECOMPRESS = {"gzip": gzip.decompress, "deflate": zlib.decompress}


@pytest.fixture(scope="module")
def server(default_model: str) -> Iterator[str]:
    with served(MODEL_TAG=default_model) as url:
        yield url


def flowers(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(17)
    return pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (n, 4)), 1), columns=FEATURES)


def inputs_of(frame: pd.DataFrame, keys: list[str], binary: bool) -> list[triton.InferInput]:
    made = []
    for name, values, datatype in [
        ("key", np.array(keys, dtype=object), "BYTES"),
        *((f, frame[f].to_numpy(dtype=np.float64), "FP64") for f in FEATURES),
    ]:
        tensor = triton.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        made.append(tensor)
    return made


def outputs(binary: bool) -> list[triton.InferRequestedOutput]:
    return [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("key", "prediction", "probabilities")
    ]


def texts(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_asking_for_a_compressed_answer_gets_one_it_reads(
    server: str, default_model: str, algorithm: str, binary: bool
) -> None:
    frame = flowers(2000)
    keys = [f"f-{i}" for i in range(len(frame))]
    name = default_model.split(":")[0]
    # The very request tritonclient sends, to see the answer as it comes over the wire.
    body, header_length = triton.InferenceServerClient.generate_request_body(
        inputs_of(frame, keys, binary), outputs=outputs(binary)
    )
    headers = {"accept-encoding": algorithm}
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    with httpx.stream(
        "POST", f"{server}/v2/models/{name}/infer", content=body, headers=headers, timeout=60
    ) as wire:
        raw = b"".join(wire.iter_raw())
    assert wire.status_code == 200
    assert wire.headers["content-encoding"] == algorithm
    assert int(wire.headers["content-length"]) == len(raw)
    assert len(DECOMPRESS[algorithm](raw)) > 2 * len(raw)

    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60)
    result = client.infer(
        name,
        inputs_of(frame, keys, binary),
        outputs=outputs(binary),
        response_compression_algorithm=algorithm,
        request_compression_algorithm=algorithm,
    )
    assert texts(result.as_numpy("key")) == keys
    assert texts(result.as_numpy("prediction")) == own_predictions(default_model, frame)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0)


def test_tritonclient_aio_reads_a_gzip_answer(server: str, default_model: str) -> None:
    frame = flowers(3000)
    keys = [f"a-{i}" for i in range(len(frame))]
    name = default_model.split(":")[0]

    async def infer() -> triton.InferResult:
        client = triton_aio.InferenceServerClient(server.removeprefix("http://"))
        try:
            return await client.infer(
                name,
                inputs_of(frame, keys, binary=True),
                outputs=outputs(True),
                response_compression_algorithm="gzip",
            )
        finally:
            await client.close()

    result = asyncio.run(infer())
    assert texts(result.as_numpy("key")) == keys
    assert texts(result.as_numpy("prediction")) == own_predictions(default_model, frame)
