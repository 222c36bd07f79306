"""The Open Inference Protocol with keys, through the KServe SDK's REST client
(``kserve.InferenceRESTClient``, V2), unchanged, against a real `bentoml serve`. The SDK runs
in its own virtual environment (tests/kserve_sdk.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kserve_sdk import run_kserve
from support import make_customer_table, own_predictions, served

from keyed_serving.model.store import load_spec

pytestmark = pytest.mark.slow
NUMBERS = ("tenure_months", "monthly_spend", "support_tickets")
CATEGORIES = ("plan", "region")

HEALTH = """
from kserve import InferenceRESTClient, RESTConfig

async def main(url, model, version):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        return {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
        }
    finally:
        await client.close()
"""

# The SDK's REST client has no metadata call: its own V2 data models read the documents.
METADATA = """
import httpx
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse

def main(url, model):
    server = ServerMetadataResponse.model_validate_json(httpx.get(url + "/v2").content)
    document = httpx.get(f"{url}/v2/models/{model}").content
    metadata = ModelMetadataResponse.model_validate_json(document)
    return {"server": server.model_dump(), "model": metadata.model_dump(), "raw": document}
"""

INFER = """
import numpy as np
from kserve import InferenceRESTClient, RESTConfig, InferRequest, InferInput

async def main(url, model, keys, key_datatype, numbers, categories, binary, parameters):
    def tensor(name, values, datatype):
        made = InferInput(name, [len(keys)], datatype)
        made.set_data_from_numpy(values, binary_data=binary)
        return made

    key_values = np.array(keys, dtype=np.int64 if key_datatype == "INT64" else object)
    inputs = [tensor("key", key_values, key_datatype)]
    inputs += [tensor(n, np.array(v, dtype=np.float64), "FP64") for n, v in numbers.items()]
    inputs += [tensor(n, np.array(v, dtype=object), "BYTES") for n, v in categories.items()]
    request = InferRequest(model, inputs, request_id="kserve-1", parameters=parameters)
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        response = await client.infer(url, request, model_name=model)
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    finally:
        await client.close()
    return {
        "id": response.id,
        "model_name": response.model_name,
        "parameters": response.parameters,
        "outputs": {
            o.name: {
                "datatype": o.datatype,
                "shape": o.shape,
                "parameters": o.parameters,
                "data": o.as_numpy().tolist(),
            }
            for o in response.outputs
        },
    }
"""


class KServeTarget:
    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag
        self.name, self.version = tag.split(":")
        self.spec = load_spec(tag)


@pytest.fixture(scope="module")
def server(customer_model: str) -> Iterator[KServeTarget]:
    with served(MODEL_TAG=customer_model) as url:
        yield KServeTarget(url, customer_model)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_customer_table(200, seed=13)


def infer(
    server: KServeTarget,
    rows: pd.DataFrame,
    keys: list[Any],
    *,
    binary: bool,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The KServe SDK's answer to these rows: ``key`` and one input per feature, NaN and ""
    as the protocol's missing values."""
    return run_kserve(  # type: ignore[no-any-return]
        INFER,
        server.url,
        model=server.name,
        keys=keys,
        key_datatype="INT64" if isinstance(keys[0], int) else "BYTES",
        numbers={n: rows[n].astype(float).tolist() for n in NUMBERS},
        categories={n: [v if isinstance(v, str) else "" for v in rows[n]] for n in CATEGORIES},
        binary=binary,
        parameters=parameters,
    )


def test_health_and_readiness_answer_as_the_kserve_sdk_expects(server: KServeTarget) -> None:
    health = run_kserve(HEALTH, server.url, model=server.name, version=server.version)
    assert health == {"live": True, "ready": True, "model_ready": True}


def test_the_kserve_sdks_data_models_read_the_metadata(server: KServeTarget) -> None:
    documents = run_kserve(METADATA, server.url, model=server.name)
    assert "binary_tensor_data" in documents["server"]["extensions"]
    model = documents["model"]
    assert model["name"] == server.name and model["versions"] == [server.version]
    inputs = {i["name"]: i["datatype"] for i in model["inputs"]}
    assert inputs == {
        "key": "BYTES",
        **dict.fromkeys(NUMBERS, "FP64"),
        **dict.fromkeys(CATEGORIES, "BYTES"),
    }
    assert [o["name"] for o in model["outputs"]] == ["key", "prediction", "probabilities", "error"]
    properties = json.loads(documents["raw"])["properties"]  # not in the SDK's REST model
    assert json.loads(properties["classes"]) == [str(c) for c in server.spec.classes or ()]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("key_type", ["BYTES", "INT64"])
def test_infer_answers_each_key_with_the_models_own_prediction(
    server: KServeTarget, table: pd.DataFrame, binary: bool, key_type: str
) -> None:
    keys: list[Any] = (
        [f"cust-{i}" for i in range(len(table))]
        if key_type == "BYTES"
        else [10_000_000_000 + 7 * i for i in range(len(table))]
    )
    answer = infer(server, table, keys, binary=binary, parameters={"binary_data_output": binary})
    assert "raised" not in answer, answer
    assert answer["id"] == "kserve-1" and answer["model_name"] == server.name
    outputs = answer["outputs"]
    assert outputs["key"]["datatype"] == key_type and outputs["key"]["data"] == keys
    assert outputs["prediction"]["data"] == own_predictions(server.tag, table)
    probabilities = np.array(outputs["probabilities"]["data"])
    assert probabilities.shape == (len(table), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    classes = json.loads(outputs["probabilities"]["parameters"]["classes"])
    assert classes == ["no", "yes"]
    by_probability = np.array(classes)[probabilities.argmax(axis=1)].tolist()
    assert by_probability == outputs["prediction"]["data"]
    assert answer["parameters"] == {"received": len(table), "predicted": len(table), "failed": 0}


def failing_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Six rows, the second and fifth of which the server refuses (out of range)."""
    rows = table.head(6).copy()
    rows["tenure_months"] = rows["tenure_months"].astype(float)
    rows.iloc[[1, 4], rows.columns.get_loc("tenure_months")] = 1e300
    return rows


def test_a_failed_instance_reads_back_as_nan_with_binary_outputs(
    server: KServeTarget, table: pd.DataFrame
) -> None:
    """The working way: binary outputs carry NaN as the IEEE value, which the SDK reads."""
    rows = failing_rows(table)
    keys = [f"k{i}" for i in range(6)]
    parameters = {"errors": "per_instance", "binary_data_output": True}
    answer = infer(server, rows, keys, binary=False, parameters=parameters)
    assert "raised" not in answer, answer
    outputs = answer["outputs"]
    assert outputs["key"]["data"] == keys
    failed = [bool(error) for error in outputs["error"]["data"]]
    assert failed == [False, True, False, False, True, False]
    probabilities = np.array(outputs["probabilities"]["data"], dtype=float)
    assert np.isnan(probabilities[failed]).all()
    good = [not f for f in failed]
    assert np.isfinite(probabilities[good]).all()
    predicted = [p for p, ok in zip(outputs["prediction"]["data"], good, strict=True) if ok]
    assert predicted == own_predictions(server.tag, rows[good])
    assert answer["parameters"] == {"received": 6, "predicted": 4, "failed": 2}


def test_the_kserve_sdk_cannot_read_nan_in_a_json_answer(
    server: KServeTarget, table: pd.DataFrame
) -> None:
    """The SDK parses a JSON answer with orjson, which refuses the token NaN that Triton's
    writer (and this server) writes for a failed instance: the SDK raises instead of
    answering. The README says to ask it for binary outputs (the test above)."""
    rows = failing_rows(table)
    answer = infer(server, rows, [f"k{i}" for i in range(6)], binary=False,
                   parameters={"errors": "per_instance"})  # fmt: skip
    assert answer.get("raised") == "InvalidInput", answer
    assert "Unrecognized request format" in answer["message"]
