"""The Open Inference Protocol over gRPC, with keys, against a real `bentoml serve` with
KEYED_GRPC_PORT: through tritonclient's gRPC clients (sync and asyncio), unchanged, and for
the retry hints through the stubs tritonclient ships.

Every answer is checked key by key against the model's own predictions for the values as
sent in their datatype (an FP32 feature is the float32 nearest the table's value)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from support import Server, free_port, make_customer_table, own_predictions
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from keyed_serving.model.store import load_spec

pytestmark = pytest.mark.slow
TOKEN = "grpc-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# A feature of each datatype a number feature takes over the wire, and the text ones.
DATATYPES = {
    "monthly_spend": "FP64",
    "tenure_months": "FP32",
    "support_tickets": "INT32",
    "plan": "BYTES",
    "region": "BYTES",
}


class GrpcServer:
    def __init__(self, server: Server, grpc_port: int, tag: str) -> None:
        self.server = server
        self.url = server.url
        self.target = f"127.0.0.1:{grpc_port}"
        self.tag = tag
        self.name, self.version = tag.split(":")
        self.spec = load_spec(tag)

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.target)

    def stub(self) -> Any:
        return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.target))


@contextlib.contextmanager
def serving(tag: str, **env: str) -> Iterator[GrpcServer]:
    """A real server with gRPC on a free port; its log is printed if the body fails."""
    port = free_port()
    server = GrpcServer(Server(MODEL_TAG=tag, KEYED_GRPC_PORT=str(port), **env), port, tag)
    try:
        yield server
    except BaseException:
        server.server.print_log()
        raise
    finally:
        server.server.stop()


@pytest.fixture(scope="module")
def served(customer_model: str) -> Iterator[GrpcServer]:
    with serving(customer_model, API_TOKEN=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_customer_table(50_000, seed=19)


def as_sent(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows as the model gets them once sent in DATATYPES: FP32 rounded to float32."""
    sent = frame.copy()
    sent["tenure_months"] = sent["tenure_months"].astype(np.float32).astype(np.float64)
    return sent


def inputs_of(frame: pd.DataFrame, keys: list[Any], module: Any = triton) -> list[Any]:
    n = len(frame)

    def tensor(name: str, values: np.ndarray, datatype: str) -> Any:
        made = module.InferInput(name, [n], datatype)
        made.set_data_from_numpy(values)
        return made

    integer_keys = isinstance(keys[0], int)
    made = [
        tensor(
            "key",
            np.array(keys, dtype=np.int64 if integer_keys else object),
            "INT64" if integer_keys else "BYTES",
        )
    ]
    for name, datatype in DATATYPES.items():
        column = frame[name]
        if datatype == "BYTES":
            values = np.array([v if isinstance(v, str) else "" for v in column], dtype=object)
        else:
            values = column.to_numpy(dtype={"FP64": np.float64, "FP32": np.float32}.get(datatype))
            if datatype == "INT32":
                values = column.to_numpy().astype(np.int32)
        made.append(tensor(name, values, datatype))
    return made


def texts(values: np.ndarray) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]


def test_health_metadata_and_readiness_answer_as_tritonclient_grpc_expects(
    served: GrpcServer,
) -> None:
    client = served.client()
    # The probes are open to all, as /v2/health/live and /v2/health/ready are.
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(served.name, headers=AUTH)
    assert client.is_model_ready(served.name, served.version, headers=AUTH)
    with pytest.raises(InferenceServerException) as unknown:  # as HTTP's 404
        client.is_model_ready("nope", headers=AUTH)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    server_metadata = client.get_server_metadata(headers=AUTH, as_json=True)
    assert "binary_tensor_data" in server_metadata["extensions"]
    metadata = client.get_model_metadata(served.name, headers=AUTH, as_json=True)
    assert metadata["name"] == served.name and metadata["versions"] == [served.version]
    http = httpx.get(f"{served.url}/v2/models/{served.name}", headers=AUTH).json()
    for side in ("inputs", "outputs"):
        over_grpc = [
            (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[side]
        ]
        assert over_grpc == [(t["name"], t["datatype"], t["shape"]) for t in http[side]]


def test_the_token_is_asked_for_as_over_http(served: GrpcServer) -> None:
    client = served.client()
    for call in (
        lambda: client.get_model_metadata(served.name),
        lambda: client.get_server_metadata(headers={"authorization": "Bearer wrong"}),
        lambda: client.infer(served.name, inputs_of(make_customer_table(3), ["a", "b", "c"])),
    ):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "bearer token" in refused.value.message()


@pytest.mark.parametrize("integer_keys", [False, True], ids=["BYTES keys", "INT64 keys"])
def test_50000_instances_of_every_feature_datatype_are_answered_by_key(
    served: GrpcServer, table: pd.DataFrame, integer_keys: bool
) -> None:
    rng = np.random.default_rng(3)
    order = rng.permutation(len(table))
    rows = table.iloc[order]
    keys: list[Any] = (
        [int(k) * 7919 - 2**40 for k in order] if integer_keys else [f"c-{k}" for k in order]
    )
    result = served.client().infer(
        served.name, inputs_of(rows, keys), headers=AUTH, request_id="big-1"
    )
    response = result.get_response()
    assert response.model_name == served.name and response.model_version == served.version
    assert response.id == "big-1"
    got_keys = result.as_numpy("key").tolist()
    assert (got_keys if integer_keys else texts(result.as_numpy("key"))) == keys
    assert texts(result.as_numpy("prediction")) == own_predictions(served.tag, as_sent(rows))
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(rows), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert response.parameters["received"].int64_param == len(rows)
    assert response.parameters["predicted"].int64_param == len(rows)


def test_the_asyncio_client_gets_each_concurrent_request_its_own_rows(
    served: GrpcServer, table: pd.DataFrame
) -> None:
    rows = table.head(2_000)
    expected = own_predictions(served.tag, as_sent(rows))

    async def run() -> list[bool]:
        client = triton_aio.InferenceServerClient(served.target)

        async def one(seed: int) -> bool:
            order = np.random.default_rng(seed).permutation(len(rows))[:150]
            keys = list(range(150))  # every request numbers its rows 0..149
            result = await client.infer(
                served.name, inputs_of(rows.iloc[order], keys, triton_aio), headers=AUTH
            )
            got = texts(result.as_numpy("prediction"))
            return result.as_numpy("key").tolist() == keys and got == [expected[i] for i in order]

        try:
            return list(await asyncio.gather(*(one(seed) for seed in range(60))))
        finally:
            await client.close()

    assert all(asyncio.run(run()))


def test_a_failed_instance_is_answered_with_its_error_and_nan_probabilities(
    served: GrpcServer, table: pd.DataFrame
) -> None:
    rows = table.head(6).copy()
    rows.loc[rows.index[2], "monthly_spend"] = np.inf  # refused by validation, by key
    keys = [f"r{i}" for i in range(6)]
    result = served.client().infer(
        served.name,
        inputs_of(rows, keys),
        parameters={"errors": "per_instance"},
        headers=AUTH,
    )
    assert texts(result.as_numpy("key")) == keys
    errors = texts(result.as_numpy("error"))
    assert errors[2] and "monthly_spend" in errors[2]
    assert [e for i, e in enumerate(errors) if i != 2] == [""] * 5
    probabilities = result.as_numpy("probabilities")
    assert np.isnan(probabilities[2]).all() and not np.isnan(np.delete(probabilities, 2, 0)).any()
    predictions = texts(result.as_numpy("prediction"))
    kept = rows.drop(rows.index[2])
    assert [p for i, p in enumerate(predictions) if i != 2] == own_predictions(
        served.tag, as_sent(kept)
    )
    assert result.get_response().parameters["failed"].int64_param == 1


def test_bad_input_is_invalid_argument_with_the_message_http_gives(
    served: GrpcServer, table: pd.DataFrame
) -> None:
    rows = table.head(3)
    duplicate_keys = ["same", "same", "other"]
    with pytest.raises(InferenceServerException) as refused:
        served.client().infer(served.name, inputs_of(rows, duplicate_keys), headers=AUTH)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    over_http = httpx.post(
        f"{served.url}/v2/models/{served.name}/infer",
        headers=AUTH,
        json={
            "inputs": [
                {"name": "key", "datatype": "BYTES", "shape": [3], "data": duplicate_keys},
                *[
                    {
                        "name": name,
                        "datatype": "FP64" if datatype != "BYTES" else "BYTES",
                        "shape": [3],
                        "data": [
                            (v if isinstance(v, str) else "")
                            if datatype == "BYTES"
                            else (None if pd.isna(v) else float(v))
                            for v in rows[name]
                        ],
                    }
                    for name, datatype in DATATYPES.items()
                ],
            ]
        },
    )
    assert over_http.status_code == 400
    assert refused.value.message() == over_http.json()["error"]
    missing = inputs_of(rows, ["a", "b", "c"])[:2]
    with pytest.raises(InferenceServerException) as refused:
        served.client().infer(served.name, missing, headers=AUTH)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing input(s)" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        served.client().infer("nope", inputs_of(rows, ["a", "b", "c"]), headers=AUTH)
    assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_typed_contents_are_taken_and_checked_against_their_datatype(
    served: GrpcServer, table: pd.DataFrame
) -> None:
    """A request with InferTensorContents instead of raw bytes (what a client without the
    raw convention sends): the same answers; an element that does not fit its datatype is
    named, as in JSON."""
    rows = table.head(20)
    request = service_pb2.ModelInferRequest(model_name=served.name)
    key = request.inputs.add(name="key", datatype="INT64", shape=[20])
    key.contents.int64_contents.extend(range(20))
    for name, datatype in DATATYPES.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[20])
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                (v if isinstance(v, str) else "").encode() for v in rows[name]
            )
        elif datatype == "INT32":
            tensor.contents.int_contents.extend(int(v) for v in rows[name])
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(float(v) for v in rows[name])
        else:
            tensor.contents.fp64_contents.extend(float(v) for v in rows[name])
    stub = served.stub()
    answer = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    names = [output.name for output in answer.outputs]
    keys = np.frombuffer(answer.raw_output_contents[names.index("key")], dtype="<i8")
    assert keys.tolist() == list(range(20))
    with pytest.raises(grpc.RpcError) as refused:
        bad = service_pb2.ModelInferRequest()
        bad.CopyFrom(request)
        bad.inputs[3].datatype = "INT8"
        bad.inputs[3].contents.Clear()
        bad.inputs[3].contents.int_contents.extend([300] * 20)
        stub.ModelInfer(bad, metadata=tuple(AUTH.items()))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'support_tickets' is INT8" in refused.value.details()


def test_grpc_listens_on_the_http_servers_host_only(served: GrpcServer) -> None:
    port = int(served.target.rsplit(":", 1)[1])
    entry = served.server.worker("KeyedPrediction")
    listening = [c.laddr for c in entry.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    grpc_addresses = {address.ip for address in listening if address.port == port}
    assert grpc_addresses and grpc_addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def strained(default_model: str) -> Iterator[GrpcServer]:
    with serving(
        default_model,
        KEYED_MAX_CONCURRENCY="1",
        KEYED_MAX_QUEUE="1",
        KEYED_REQUEST_DEADLINE_S="4",
        KEYED_MAX_BODY_BYTES=str(1024 * 1024),
    ) as server:
        yield server


def iris_request(name: str, n: int) -> Any:
    request = service_pb2.ModelInferRequest(model_name=name)
    key = request.inputs.add(name="key", datatype="BYTES", shape=[n])
    key.contents.bytes_contents.extend(f"k{i}".encode() for i in range(n))
    for feature in ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"):
        tensor = request.inputs.add(name=feature, datatype="FP64", shape=[n])
        tensor.contents.fp64_contents.extend([2.5] * n)
    return request


def retry_hint(error: grpc.RpcError) -> dict[str, str]:
    trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return {k: trailing[k] for k in ("retry-after", "grpc-retry-pushback-ms") if k in trailing}


def waiting(server: GrpcServer) -> float:
    """keyed_admission_waiting: the requests waiting for a turn now."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = [
        line.split()[-1] for line in text.splitlines() if line.startswith("keyed_admission_waiting")
    ]
    return float(values[0]) if values else 0.0


def poll(condition: Any, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        threading.Event().wait(0.025)
    raise AssertionError(f"not within 10 s: {what}")


@contextlib.contextmanager
def turn_held(strained: GrpcServer) -> Iterator[dict[str, Any]]:
    """KEYED_MAX_CONCURRENCY=1: the one turn held by an HTTP request whose body is still
    coming, until the block ends; ``["response"]`` is its answer, once it has one."""
    release, held = threading.Event(), {}

    def slow_body() -> Iterator[bytes]:
        yield b'{"instances": [{"key": "h", "features": {"sepal_length_cm": 1, '
        release.wait(30)
        yield b'"sepal_width_cm": 1, "petal_length_cm": 1, "petal_width_cm": 1}}]}'

    thread = threading.Thread(
        target=lambda: held.update(
            response=httpx.post(
                f"{strained.url}/predict",
                content=slow_body(),
                headers={"content-type": "application/json"},
                timeout=60,
            )
        )
    )
    thread.start()
    probe = strained.stub()
    name = strained.tag.split(":")[0]

    def holds() -> bool:
        """A call with a short deadline is served at once unless the turn is held."""
        try:
            probe.ModelInfer(iris_request(name, 1), timeout=0.3)
        except grpc.RpcError:
            return True
        return False

    try:
        poll(holds, "the slow request holds the turn")
        poll(lambda: waiting(strained) == 0, "the probe has left the queue")
        yield held
    finally:
        release.set()
        thread.join(60)


def test_past_the_limit_a_request_waits_for_its_turn_and_a_full_queue_is_refused(
    strained: GrpcServer,
) -> None:
    """Issue 18: past KEYED_MAX_CONCURRENCY a request was refused at once, and clients that
    retry at once spent the server on refusals. Now (KEYED_MAX_QUEUE=1) an HTTP request
    waits for the turn an HTTP request holds and is answered 200 once it is free; while it
    waits, the queue is full, and a gRPC call is refused at once with the retry hint: one
    admission for both protocols."""
    name = strained.tag.split(":")[0]
    with turn_held(strained) as held:
        queued: dict[str, Any] = {}
        body = {
            "keys": ["q1", "q2"],
            "columns": {feature: [2.5, 0.5] for feature in IRIS[1:]},
        }
        thread = threading.Thread(
            target=lambda: queued.update(
                response=httpx.post(f"{strained.url}/predict", json=body, timeout=60)
            )
        )
        thread.start()
        poll(lambda: waiting(strained) == 1, "the request waits for a turn")
        with pytest.raises(grpc.RpcError) as refused:
            strained.stub().ModelInfer(iris_request(name, 2), timeout=10)
        assert thread.is_alive()  # still waiting, neither refused nor served
    thread.join(60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "waiting (the most)" in refused.value.details()
    assert retry_hint(refused.value) == {"retry-after": "1", "grpc-retry-pushback-ms": "1000"}
    assert held["response"].status_code == 200, held["response"].text
    answer = queued["response"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["keys"] == ["q1", "q2"] and len(answer.json()["predictions"]) == 2
    assert waiting(strained) == 0
    served = strained.stub().ModelInfer(iris_request(name, 2), timeout=10)
    assert served.outputs[0].name == "key" and served.parameters["predicted"].int64_param == 2


def test_a_call_that_waited_until_its_deadline_is_unavailable_with_a_retry_hint(
    strained: GrpcServer,
) -> None:
    """KEYED_REQUEST_DEADLINE_S=4 and the turn held longer: the waiting call is answered
    UNAVAILABLE (HTTP's 503) at its deadline, without being predicted, and nothing hangs."""
    name = strained.tag.split(":")[0]
    with turn_held(strained), pytest.raises(grpc.RpcError) as expired:
        strained.stub().ModelInfer(iris_request(name, 2), timeout=30)
    assert expired.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "could not be answered in time" in expired.value.details()
    assert retry_hint(expired.value) == {"retry-after": "1", "grpc-retry-pushback-ms": "1000"}
    assert waiting(strained) == 0


def test_a_message_past_the_body_limit_is_resource_exhausted_without_a_retry_hint(
    strained: GrpcServer,
) -> None:
    name = strained.tag.split(":")[0]
    with pytest.raises(grpc.RpcError) as refused:
        strained.stub().ModelInfer(iris_request(name, 40_000), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_hint(refused.value) == {}


def test_a_runner_that_does_not_answer_is_unavailable_with_a_retry_hint(
    strained: GrpcServer,
) -> None:
    name = strained.tag.split(":")[0]
    runner = strained.server.worker("ModelRunner")
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            strained.stub().ModelInfer(iris_request(name, 3), timeout=30)
    finally:
        os.kill(runner.pid, signal.SIGCONT)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert retry_hint(refused.value) == {"retry-after": "1", "grpc-retry-pushback-ms": "1000"}
    answer = strained.stub().ModelInfer(iris_request(name, 3), timeout=30)
    assert answer.model_name == name


DATATYPE_NAMES = [
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64", "BYTES", "BF16", "", "fp64", "STRING",
]  # fmt: skip
CONTENTS = [
    "bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
    "fp32_contents", "fp64_contents", "bytes_contents",
]  # fmt: skip
IRIS = ["key", "sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def _elements(draw: Any, field: str, n: int) -> list[Any]:
    from hypothesis import strategies as st

    kinds = {
        "bool_contents": st.booleans(),
        "int_contents": st.integers(-(2**31), 2**31 - 1),
        "int64_contents": st.integers(-(2**63), 2**63 - 1),
        "uint_contents": st.integers(0, 2**32 - 1),
        "uint64_contents": st.integers(0, 2**64 - 1),
        "fp32_contents": st.floats(width=32),
        "fp64_contents": st.floats(),
        "bytes_contents": st.binary(max_size=6),
    }
    return draw(st.lists(kinds[field], min_size=n, max_size=n))


VALID = {"BYTES": "bytes_contents", "INT64": "int64_contents", "FP64": "fp64_contents",
         "FP32": "fp32_contents", "INT32": "int_contents"}  # fmt: skip


def fuzzed_requests() -> Any:
    """Nearly valid ModelInferRequests for the iris model: each part right more often than
    not (so that many reach the model), else a random datatype, shape, contents field,
    element count or raw bytes."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Any) -> Any:
        # Half the requests are right in nearly every part, the others in most.
        care = draw(st.sampled_from([40, 3]))

        def often(likely: Any, otherwise: Any) -> Any:
            return likely if draw(st.integers(0, care)) else otherwise

        request = service_pb2.ModelInferRequest(model_name=often("iris_classifier", "nope"))
        n = often(draw(st.integers(1, 4)), 0)
        raw = draw(st.booleans())
        names = often(IRIS, draw(st.lists(st.sampled_from(IRIS), max_size=6)))
        for index, name in enumerate(names):
            if name == "key":
                good = often(draw(st.sampled_from(["BYTES", "INT64"])), None)
            else:
                good = often(draw(st.sampled_from(["FP64", "FP32", "INT32", "INT64"])), None)
            datatype = good or draw(st.sampled_from(DATATYPE_NAMES))
            tensor = request.inputs.add(name=name, datatype=datatype)
            shape = often([n], draw(st.sampled_from([[n, 1], [n, 2], [], [-1], [n + 1], [2**40]])))
            tensor.shape.extend(shape)
            if raw:
                size = {"INT64": 8, "FP64": 8, "FP32": 4, "INT32": 4}.get(datatype)
                if size and often(True, False):
                    request.raw_input_contents.append(
                        draw(st.binary(min_size=size * n, max_size=size * n))
                    )
                elif datatype == "BYTES" and often(True, False):
                    items = [f"{name}-{index}-{i}".encode() for i in range(n)]
                    request.raw_input_contents.append(
                        b"".join(len(i).to_bytes(4, "little") + i for i in items)
                    )
                else:
                    request.raw_input_contents.append(draw(st.binary(max_size=40)))
            else:
                field = often(
                    VALID.get(datatype, "bytes_contents"), draw(st.sampled_from(CONTENTS))
                )
                count = often(n, draw(st.sampled_from([n + 1, 0])))
                if name == "key" and field == "bytes_contents" and count == n:
                    tensor.contents.bytes_contents.extend(f"k{i}".encode() for i in range(n))
                elif name == "key" and field == "int64_contents" and count == n:
                    tensor.contents.int64_contents.extend(range(n))
                else:
                    getattr(tensor.contents, field).extend(_elements(draw, field, count))
            if not often(True, False):
                tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 50))
        if draw(st.booleans()):
            choice = draw(
                st.sampled_from(["reject", "per_instance", "per_instance", "bogus", 1, True])
            )
            parameter = request.parameters["errors"]
            if isinstance(choice, bool):
                parameter.bool_param = choice
            elif isinstance(choice, int):
                parameter.int64_param = choice
            else:
                parameter.string_param = choice
        if draw(st.integers(0, 3)) == 0:
            for name in draw(
                st.lists(st.sampled_from(["key", "prediction", "probabilities", "error", "x"]))
            ):
                output = request.outputs.add(name=name)
                if draw(st.integers(0, 5)) == 0:
                    output.parameters["classification"].int64_param = 2
        return request

    return build()


def test_no_fuzzed_grpc_request_gets_an_internal_error(strained: GrpcServer) -> None:
    """Random datatypes, shapes, contents and raw bytes over gRPC: a refusal with a status
    code naming the problem, or an answer with every key sent; never INTERNAL or UNKNOWN."""
    from hypothesis import HealthCheck, given, settings

    stub = strained.stub()
    answered = []

    @settings(
        max_examples=250,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(request=fuzzed_requests())
    def one(request: Any) -> None:
        try:
            answer = stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                request,
                error.details(),  # type: ignore[attr-defined]
            )
            assert error.details(), request  # type: ignore[attr-defined]
            return
        answered.append(answer)
        names = [output.name for output in answer.outputs]
        if "key" in names:  # every key sent, once, in order
            sent = request.inputs[[t.name for t in request.inputs].index("key")]
            raw = answer.raw_output_contents[names.index("key")]
            if sent.datatype == "INT64":
                got: list[Any] = np.frombuffer(raw, dtype="<i8").tolist()
            else:
                got, at = [], 0
                while at < len(raw):
                    size = int.from_bytes(raw[at : at + 4], "little")
                    got.append(raw[at + 4 : at + 4 + size])
                    at += 4 + size
            assert answer.parameters["received"].int64_param == len(got)
            assert len(got) == len(set(got)), (request, got)

    one()
    # The fuzz reaches the model, not only the first checks.
    assert len(answered) >= 10, len(answered)


KSERVE_GRPC = """
import numpy as np
from kserve import InferenceGRPCClient, InferRequest, InferInput

async def main(url, model, token, keys, key_datatype, columns, binary):
    auth = (("authorization", "Bearer " + token),)
    client = InferenceGRPCClient(url, timeout=60)
    dtypes = {"FP64": np.float64, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}

    def tensor(name, values, datatype):
        made = InferInput(name, [len(keys)], datatype)
        made.set_data_from_numpy(np.array(values, dtype=dtypes.get(datatype, object)),
                                 binary_data=binary)
        return made

    inputs = [tensor("key", keys, key_datatype)]
    inputs += [tensor(name, values, datatype) for name, (datatype, values) in columns.items()]
    health = {
        "live": await client.is_server_live(headers=auth),
        "ready": await client.is_server_ready(headers=auth),
        "model_ready": await client.is_model_ready(model, headers=auth),
    }
    response = await client.infer(InferRequest(model, inputs, request_id="kg-1"), headers=auth)
    return {
        "health": health,
        "id": response.id,
        "model_name": response.model_name,
        "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
    }
"""


@pytest.mark.parametrize("binary", [False, True], ids=["typed contents", "raw contents"])
@pytest.mark.parametrize("integer_keys", [False, True], ids=["BYTES keys", "INT64 keys"])
def test_the_kserve_sdks_grpc_client_gets_each_key_with_the_models_own_prediction(
    served: GrpcServer, table: pd.DataFrame, binary: bool, integer_keys: bool
) -> None:
    from kserve_sdk import run_kserve

    rows = table.head(3_000)
    keys: list[Any] = (
        [10_000_000_000 + 13 * i for i in range(len(rows))]
        if integer_keys
        else [f"ks-{i}" for i in range(len(rows))]
    )
    columns = {}
    for name, datatype in DATATYPES.items():
        column = rows[name]
        if datatype == "BYTES":
            columns[name] = (datatype, [v if isinstance(v, str) else "" for v in column])
        elif datatype == "INT32":
            columns[name] = (datatype, [int(v) for v in column])
        else:
            columns[name] = (datatype, [float(v) for v in column])
    answer = run_kserve(
        KSERVE_GRPC,
        served.target,
        model=served.name,
        token=TOKEN,
        keys=keys,
        key_datatype="INT64" if integer_keys else "BYTES",
        columns=columns,
        binary=binary,
    )
    assert answer["health"] == {"live": True, "ready": True, "model_ready": True}
    assert answer["id"] == "kg-1" and answer["model_name"] == served.name
    assert answer["outputs"]["key"] == keys
    predictions = answer["outputs"]["prediction"]
    assert predictions == own_predictions(served.tag, as_sent(rows))


def test_the_request_id_is_taken_by_the_rule_http_has(strained: GrpcServer) -> None:
    """A sane x-request-id comes back as sent; another (here with a space and a quote, as
    could end up in a log line) is replaced by a new one, as X-Request-ID is over HTTP."""
    name = strained.tag.split(":")[0]
    stub = strained.stub()
    for sent, kept in (("req-42.a_b", True), ('two words"', False)):
        _, call = stub.ModelInfer.with_call(
            iris_request(name, 2), metadata=(("x-request-id", sent),), timeout=30
        )
        echoed = dict(call.trailing_metadata())["x-request-id"]
        assert (echoed == sent) is kept and echoed
