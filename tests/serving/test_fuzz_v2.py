"""Nearly valid Open Inference Protocol (V2) inference requests for the served iris model, as
a fuzzer builds them from the model's metadata: an input ``key`` and one per feature, each
with a random datatype (every one the protocol names, and junk), shape, element count and
element types (NaN, the infinities, integers beyond 64 bits, text, null, lists), in JSON or
in the binary tensor data extension with sizes that match or do not and BYTES framing that
holds or breaks, a random Inference-Header-Content-Length, random outputs and parameters of
every JSON type.

Whatever comes, the answer is a 4xx whose JSON ``error`` names what is wrong, or a 200 that
answers every key sent once, as sent, with the model's own prediction. A valid request
answers bit for bit alike in JSON and in binary. Through BentoML's own ASGI app, in-process.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from support import own_predictions

ROUTE = "/v2/models/iris_classifier/infer"
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
CLASSES = 3
# The protocol's datatypes (inference_rest.md, "Tensor Data Types"), with NumPy's name for
# each fixed-size one; BF16 is Triton's, and has none.
NUMBER_DTYPES = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
INTEGER_TYPES = [name for name in NUMBER_DTYPES if "INT" in name]
FLOAT_TYPES = ["FP16", "FP32", "FP64"]
DATATYPES = [*NUMBER_DTYPES, "BYTES"]
JUNK_DATATYPES = ["BF16", "fp64", "STRING", "", "INT128", "FP64 ", "bytes", "TYPE_FP32"]
OUTPUT_NAMES = ["key", "prediction", "probabilities", "error"]
# Words of a 4xx that name where the fault is: a field, header or part of the request.
NAMED = (
    "input", "output", "key", "parameters", "datatype", "shape", "data", "binary",
    "Inference-Header-Content-Length", "JSON", "instance", "id", "model",
)  # fmt: skip
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
EDGE_NUMBERS = st.sampled_from(
    [
        math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, -1e300, 5e-324, 65504.0, 65520.0,
        3.4e38, 3.5e38, 2.6, -1, 255, 256, 300, -129, 2**31, 2**53 + 1, 2**63 - 1, 2**63,
        2**64 - 1, 2**64, -(2**63) - 1, 2**70,
    ]
)  # fmt: skip
NUMBERS = (
    st.floats(0, 8, allow_nan=False).map(lambda x: round(x, 2))
    | st.integers(0, 8)
    | EDGE_NUMBERS
    | st.floats()
    | st.integers(-(2**70), 2**70)
)
ODD_ELEMENTS = (
    st.none()
    | st.booleans()
    | st.text(max_size=4)
    | st.lists(st.integers(0, 3), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)
)
# Texts with lone surrogates too: JSON can carry them, UTF-8 cannot.
TEXT = st.text(st.characters(exclude_categories=()), max_size=6)
# Latin-1 header values: what an HTTP header can hold, digits of other scripts among them.
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=6,
) | st.sampled_from(["\xb2", "\xb9\xb2", "1\xb3", " 12", "+5", "5.0", "-0", "", "0x10", "9" * 30])


@dataclass
class Tensor:
    """One input as sent: its JSON fields, and its bytes where it goes binary."""

    name: Any
    datatype: Any
    shape: Any
    elements: list[Any]  # as the test meant them: JSON values, or what the bytes encode
    nested: bool = False  # data as [[a], [b], ...]
    raw: bytes | None = None  # binary: the bytes sent after the JSON header
    size: Any = None  # binary: parameters.binary_data_size as sent
    data_too: bool = False  # binary: data sent beside binary_data_size
    parameters: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        written: dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "shape": self.shape,
        }
        parameters = dict(self.parameters)
        if self.raw is not None:
            parameters["binary_data_size"] = self.size
        if parameters:
            written["parameters"] = parameters
        if self.raw is None or self.data_too:
            written["data"] = [[e] for e in self.elements] if self.nested else self.elements
        return written


@dataclass
class Request:
    tensors: list[Tensor]
    parameters: dict[str, Any]
    outputs: Any  # None: not sent
    request_id: Any  # None: not sent
    header_length: Any  # "correct", None (not sent) or a text sent as it is
    media_type: str | None

    def http(self) -> tuple[bytes, dict[str, bytes]]:
        document: dict[str, Any] = {"inputs": [t.document() for t in self.tensors]}
        if self.parameters:
            document["parameters"] = self.parameters
        if self.outputs is not None:
            document["outputs"] = self.outputs
        if self.request_id is not None:
            document["id"] = self.request_id
        header = json.dumps(document).encode()  # NaN as Python's (and tritonclient's) writer
        body = header + b"".join(t.raw for t in self.tensors if t.raw is not None)
        headers = {}
        if self.header_length == "correct":
            headers["inference-header-content-length"] = str(len(header)).encode()
        elif self.header_length is not None:
            headers["inference-header-content-length"] = self.header_length.encode("latin-1")
        if self.media_type is not None:
            headers["content-type"] = self.media_type.encode()
        return body, headers


def encode(elements: list[Any], datatype: Any) -> bytes | None:
    """The elements in the binary extension's encoding of ``datatype``; None where they do not
    fit it (or it has no encoding)."""
    if datatype == "BYTES":
        texts = [e if isinstance(e, str) else json.dumps(e) for e in elements]
        return b"".join(
            struct.pack("<I", len(raw)) + raw
            for raw in (t.encode("utf-8", "surrogatepass") for t in texts)
        )
    if not isinstance(datatype, str) or datatype not in NUMBER_DTYPES:
        return None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return np.array(elements, dtype=NUMBER_DTYPES[datatype]).tobytes()
    except (ValueError, TypeError, OverflowError):
        return None


# Where a request may go wrong. A request has no fault (four in ten), one, or a few, so that
# most reach the model while each check still meets every kind of mistake.
TENSOR_PLACES = ("datatype", "shape", "elements", "count", "raw", "size", "data_too", "extra")
REQUEST_PLACES = ("inputs", "parameters", "outputs", "id", "header_length")
PLACES = st.sampled_from(
    [f"{name} {place}" for name in ["key", *FEATURES] for place in TENSOR_PLACES]
    + list(REQUEST_PLACES)
)


@st.composite
def faults(draw: st.DrawFn) -> frozenset[str]:
    pick = draw(st.integers(0, 9))
    if pick < 4:
        return frozenset()
    return frozenset(draw(st.lists(PLACES, min_size=1, max_size=1 if pick < 8 else 4)))


@st.composite
def datatypes(draw: st.DrawFn, good: list[str], wild: bool) -> Any:
    if not wild:
        return draw(st.sampled_from(good))
    if draw(st.booleans()):
        return draw(st.sampled_from(DATATYPES))
    return draw(
        st.sampled_from(JUNK_DATATYPES) | st.sampled_from([None, 64, True, ["BYTES"], {"t": 1}])
    )


def shapes(n: int, wild: bool) -> st.SearchStrategy[Any]:
    if not wild:
        return st.sampled_from([[n], [n], [n, 1]])
    wrong = [[], [n, 2], [-1], [n, -1], [n + 1], [2**40], [2**64], [float(n)], [str(n)], [True]]
    return st.sampled_from([*wrong, [n, 1, 1], [[n]], None, n, "x"])


def key_values(datatype: Any, wild: bool) -> st.SearchStrategy[Any]:
    if isinstance(datatype, str) and datatype in INTEGER_TYPES and datatype != "BOOL":
        bounds = np.iinfo(NUMBER_DTYPES[datatype])
        inside = st.integers(int(bounds.min), int(bounds.max))
        return inside | EDGE_NUMBERS | ODD_ELEMENTS if wild else inside
    if wild:
        return TEXT | NUMBERS | ODD_ELEMENTS  # lone surrogates, "", numbers, null, lists
    return st.text(min_size=1, max_size=8)


def feature_values(datatype: Any, wild: bool) -> st.SearchStrategy[Any]:
    if wild:
        return NUMBERS | ODD_ELEMENTS
    if datatype in FLOAT_TYPES:
        return st.floats(0, 8).map(lambda x: round(x, 2)) | st.integers(0, 8) | st.just(math.nan)
    if datatype in INTEGER_TYPES:
        bounds = np.iinfo(NUMBER_DTYPES[datatype])
        return st.integers(max(0, int(bounds.min)), 8) | st.integers(
            int(bounds.min), int(bounds.max)
        )
    return NUMBERS


@st.composite
def tensors(
    draw: st.DrawFn, name: Any, datatype: Any, n: int, values: st.SearchStrategy[Any],
    binary: bool, wild: frozenset[str],
) -> Tensor:  # fmt: skip
    count = draw(st.integers(0, 7)) if "count" in wild else n
    if name == "key" and "elements" not in wild:
        unique = st.lists(values, min_size=count, max_size=count, unique=True)
        elements = draw(unique)
    else:
        elements = draw(st.lists(values, min_size=count, max_size=count))
        if name == "key" and elements:
            elements[-1] = elements[0]  # a duplicate, among other wild keys
    tensor = Tensor(name, datatype, draw(shapes(n, "shape" in wild)), elements)
    tensor.nested = draw(st.integers(0, 4)) == 0
    if "extra" in wild:
        tensor.parameters = draw(
            st.dictionaries(
                st.sampled_from(["content_type", "x", "binary_data_size"]), JSON_VALUES, max_size=2
            )
        )
    if not binary:
        return tensor
    raw = encode(elements, datatype)
    if raw is None:  # elements the datatype cannot hold: bytes of the size it asks
        dtype = NUMBER_DTYPES.get(datatype, "u1") if isinstance(datatype, str) else "u1"
        raw = draw(
            st.binary(min_size=n * np.dtype(dtype).itemsize, max_size=n * np.dtype(dtype).itemsize)
        )
    if "raw" in wild:
        mutation = draw(st.integers(0, 3))
        if mutation == 0:
            raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
        elif mutation == 1:
            raw += draw(st.binary(min_size=1, max_size=9))
        elif mutation == 2:
            raw = draw(st.binary(max_size=40))
        elif len(raw) >= 4:  # a BYTES length that runs past the end, or stops short
            raw = struct.pack("<I", draw(st.sampled_from([len(raw), 2**32 - 1, 0, 1]))) + raw[4:]
    tensor.raw = raw
    tensor.size = len(raw)
    if "size" in wild:
        tensor.size = draw(
            st.sampled_from([len(raw) + d for d in (-1, 1, -4, 8, 10**6, -(10**6))])
            | st.sampled_from([float(len(raw)), str(len(raw)), True, None, [len(raw)], 2**64])
        )
    tensor.data_too = "data_too" in wild
    return tensor


def output_lists(per_instance: bool) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Outputs a request may ask for: some of the mode's, in any order, each as JSON or
    binary or as the request says."""
    names = OUTPUT_NAMES if per_instance else OUTPUT_NAMES[:3]
    output = st.fixed_dictionaries(
        {"name": st.sampled_from(names)},
        optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans()})},
    )
    return st.lists(output, max_size=4, unique_by=lambda o: o["name"])


@st.composite
def requests(draw: st.DrawFn) -> Request:
    wild = draw(faults())
    n = 0 if draw(st.integers(0, 19)) == 0 else draw(st.integers(1, 6))
    binary = draw(st.integers(0, 2))  # 0: JSON, 1: binary, 2: input by input

    def goes_binary() -> bool:
        return binary == 1 or (binary == 2 and draw(st.booleans()))

    inputs = []
    for name in ["key", *FEATURES]:
        mine = frozenset(place.split(" ")[1] for place in wild if place.startswith(name + " "))
        good = ["BYTES", "INT64", *INTEGER_TYPES[1:]] if name == "key" else list(NUMBER_DTYPES)[1:]
        datatype = draw(datatypes(good, "datatype" in mine))
        values = key_values if name == "key" else feature_values
        wild_values = values(datatype, "elements" in mine)
        inputs.append(draw(tensors(name, datatype, n, wild_values, goes_binary(), mine)))
    if "inputs" in wild:
        change = draw(st.integers(0, 2))
        if change == 0:
            del inputs[draw(st.integers(0, len(inputs) - 1))]
        elif change == 1:
            extra = draw(st.sampled_from(["other", "_key", "KEY", "", 7, None]))
            inputs.append(draw(tensors(extra, "FP64", n, NUMBERS, goes_binary(), frozenset())))
        else:
            inputs.append(inputs[draw(st.integers(0, len(inputs) - 1))])
    if draw(st.integers(0, 4)) == 0:
        inputs = draw(st.permutations(inputs))

    choices: dict[str, st.SearchStrategy[Any]] = {
        "errors": st.sampled_from(["reject", "per_instance"]),
        "binary_data_output": st.booleans(),
    }
    if "parameters" in wild:
        choices = {
            "errors": choices["errors"] | JSON_VALUES,
            "binary_data_output": choices["binary_data_output"] | JSON_VALUES,
            "timeout": JSON_VALUES,
            "priority": JSON_VALUES,
        }
    parameters = draw(st.fixed_dictionaries({}, optional=choices))
    outputs = None
    if "outputs" in wild:
        output = st.fixed_dictionaries(
            {"name": st.sampled_from(OUTPUT_NAMES) | JSON_VALUES},
            optional={
                "parameters": st.fixed_dictionaries(
                    {},
                    optional={
                        "binary_data": st.booleans() | JSON_VALUES,
                        "classification": st.integers(0, 3),
                        "other": JSON_VALUES,
                    },
                )
            },
        )
        outputs = draw(st.lists(output | JSON_VALUES, max_size=5) | JSON_VALUES)
    elif draw(st.integers(0, 2)) == 0:
        outputs = draw(output_lists(parameters.get("errors") == "per_instance"))
    request_id = None
    if "id" in wild:
        request_id = draw(JSON_VALUES)
    elif draw(st.booleans()):
        request_id = draw(st.text(max_size=8))
    sends_binary = any(t.raw is not None for t in inputs)
    header_length: Any = "correct" if sends_binary else None
    if "header_length" in wild:
        header_length = draw(st.sampled_from([None, "correct"]) | HEADER_TEXT)
    elif not sends_binary and draw(st.integers(0, 4)) == 0:
        header_length = "correct"  # a JSON body may say its own length
    media_type = draw(st.sampled_from([None, "application/json", "application/octet-stream"]))
    return Request(inputs, parameters, outputs, request_id, header_length, media_type)


@dataclass
class Answered:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def post(client: TestClient, body: bytes, headers: dict[str, bytes]) -> Answered:
    """POST to the V2 route through the session's app with the header bytes as they are: the
    TestClient would send a Latin-1 header value re-encoded as UTF-8, as no real client does.
    An app that ends without answering is a 500, as a real server answers it."""
    messages: list[Any] = []
    received = False
    answered = anyio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:  # the client waits for its answer, then goes: as the TestClient does
            await answered.wait()
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": ROUTE,
        "raw_path": ROUTE.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-length", str(len(body)).encode()),
            *((name.encode(), value) for name, value in headers.items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    try:
        client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    except Exception as exc:  # what a real server answers with a 500
        return Answered(500, {}, json.dumps({"error": repr(exc)}).encode())
    if not messages:
        return Answered(500, {}, b'{"error": "the app ended without an answer"}')
    start = messages[0]
    answer_headers = {
        name.decode().lower(): value.decode("latin-1") for name, value in start["headers"]
    }
    content = b"".join(m.get("body", b"") for m in messages[1:])
    return Answered(start["status"], answer_headers, content)


def bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES elements in the binary extension's framing: a 4-byte length, then the bytes."""
    elements, at = [], 0
    while at < len(raw):
        (length,) = struct.unpack_from("<I", raw, at)
        elements.append(raw[at + 4 : at + 4 + length])
        at += 4 + length
    return elements


def decode_answer(response: Any) -> dict[str, Any]:
    """The answer's JSON with each output's elements, from JSON or from the bytes after it,
    as ``output["values"]`` (a flat list)."""
    content = response.content
    length = response.headers.get("inference-header-content-length")
    header_end = int(length) if length is not None else len(content)
    answer = json.loads(content[:header_end])
    offset = header_end
    for output in answer["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            output["values"] = list(output["data"])
            continue
        raw = content[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            output["values"] = [element.decode("utf-8") for element in bytes_elements(raw)]
        else:
            output["values"] = np.frombuffer(raw, dtype=NUMBER_DTYPES[output["datatype"]]).tolist()
    assert offset == len(content), "the binary outputs add up to the body"
    return answer


def held(tensor: Tensor) -> list[Any]:
    """The elements of an input the server took, as its datatype holds them."""
    dtype = np.dtype(NUMBER_DTYPES.get(tensor.datatype, "O"))
    if tensor.raw is not None:
        if tensor.datatype == "BYTES":  # the bytes sent, which a mutation may have changed
            return [element.decode("utf-8") for element in bytes_elements(tensor.raw)]
        return np.frombuffer(tensor.raw, dtype=dtype).tolist()
    if dtype.kind == "f":
        with np.errstate(all="ignore"):
            return [
                None if e is None else float(np.array(float(e), dtype=dtype))
                for e in tensor.elements
            ]
    return list(tensor.elements)


def check(response: Any, request: Request, model_tag: str) -> None:
    sent = request.http()
    assert response.status_code < 500, (sent, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and any(word in error for word in NAMED), (sent, error)
        return
    assert response.status_code == 200, (sent, response.status_code)
    answer = decode_answer(response)
    by_name = {t.name: t for t in request.tensors}
    n = len(by_name["key"].elements)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert len(outputs) == len(answer["outputs"]), answer["outputs"]
    if request.outputs:  # an empty list, as none, asks for every output
        assert [o["name"] for o in answer["outputs"]] == [o["name"] for o in request.outputs]
    for output in outputs.values():
        assert output["shape"][0] == n and len(output["values"]) == math.prod(output["shape"])
    if "key" in outputs:
        key = by_name["key"]
        assert outputs["key"]["datatype"] == key.datatype
        got = outputs["key"]["values"]
        assert [(type(k), k) for k in got] == [(type(k), k) for k in held(key)], (sent, got)
    summary = answer["parameters"]
    assert summary["received"] == n and summary["predicted"] + summary["failed"] == n
    if "error" in outputs:
        predicted = [e == "" for e in outputs["error"]["values"]]
        assert sum(predicted) == summary["predicted"]
    elif request.parameters.get("errors") == "per_instance":
        return  # which keys failed, only the error output says
    else:
        assert summary["failed"] == 0
        predicted = [True] * n
    if "prediction" in outputs and any(predicted):
        frame = pd.DataFrame({name: held(by_name[name]) for name in FEATURES}, dtype=float)
        own = own_predictions(model_tag, frame[predicted])
        got = [p for p, ok in zip(outputs["prediction"]["values"], predicted, strict=True) if ok]
        assert got == own, (sent, got, own)


@FUZZ
@given(request=requests())
def test_no_nearly_valid_v2_request_gets_a_5xx_and_every_200_answers_every_key(
    asgi_client: TestClient, default_model: str, request: Request
) -> None:
    body, headers = request.http()
    response = post(asgi_client, body, headers)
    event(f"status {response.status_code}")
    check(response, request, default_model)


@settings(FUZZ, max_examples=150)
@given(request=requests())
def test_through_bentomls_own_api_route_too(
    asgi_client: TestClient, default_model: str, request: Request
) -> None:
    """The same requests where the lean route is off (CORS on): BentoML's API calls the same
    decoder, inside its own error handling."""
    import service

    body, headers = request.http()
    service.ENTRY.enabled = False
    try:
        response = post(asgi_client, body, headers)
    finally:
        service.ENTRY.enabled = True
    check(response, request, default_model)


def float_values(datatype: str) -> st.SearchStrategy[float]:
    """Numbers a float datatype holds without overflowing: rounded alike from JSON and by a
    client's NumPy, and the infinities, which are refused by key in both."""
    width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
    bound = {"FP16": 60_000.0, "FP32": 3e38, "FP64": 1e300}[datatype]
    return (
        st.floats(0, 8).map(lambda x: round(x, 3))
        | st.floats(-bound, bound)
        | st.floats(width=width, allow_infinity=False)
        | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.1])
    )


@st.composite
def valid_pairs(draw: st.DrawFn) -> tuple[Request, Request]:
    """One valid request twice: every input in JSON, and every input (or most) in binary."""
    n = draw(st.integers(1, 8))
    key_type = draw(st.sampled_from(["BYTES", "INT64", *INTEGER_TYPES[1:]]))
    as_json, as_binary = [], []
    for name in ["key", *FEATURES]:
        if name == "key":
            datatype = key_type
            values = key_values(datatype, wild=False)
            elements = draw(st.lists(values, min_size=n, max_size=n, unique=True))
        else:
            datatype = draw(st.sampled_from(list(NUMBER_DTYPES)[1:]))
            values = (
                float_values(datatype)
                if datatype in FLOAT_TYPES
                else feature_values(datatype, wild=False)
            )
            elements = draw(st.lists(values, min_size=n, max_size=n))
        shape = draw(st.sampled_from([[n], [n, 1]]))
        as_json.append(Tensor(name, datatype, shape, elements, nested=draw(st.booleans())))
        raw = encode(elements, datatype)
        assert raw is not None, (elements, datatype)
        sent = Tensor(name, datatype, shape, elements, raw=raw, size=len(raw))
        as_binary.append(sent if draw(st.integers(0, 4)) else as_json[-1])
    order = draw(st.permutations(range(len(as_json))))
    per_instance = draw(st.booleans())
    outputs = draw(st.none() | output_lists(per_instance))
    request_id = draw(st.none() | st.text(max_size=8))

    def request(tensors: list[Tensor]) -> Request:
        parameters: dict[str, Any] = {"binary_data_output": draw(st.booleans())}
        if per_instance:
            parameters["errors"] = "per_instance"
        binary = any(t.raw is not None for t in tensors)
        return Request(
            [tensors[i] for i in order],
            parameters,
            outputs,
            request_id,
            "correct" if binary else None,
            None,
        )

    return request(as_json), request(as_binary)


def bits(output: dict[str, Any]) -> tuple[str, list[int], bytes]:
    """An output's datatype, shape and elements as the bytes of its datatype (every NaN as
    NumPy's): equal bits, or not."""
    if output["datatype"] == "BYTES":
        values = [str(v).encode("utf-8") for v in output["values"]]
        return (
            output["datatype"],
            output["shape"],
            b"".join(struct.pack("<I", len(v)) + v for v in values),
        )
    array = np.asarray(
        [math.nan if v is None else v for v in output["values"]],
        dtype=NUMBER_DTYPES[output["datatype"]],
    )
    if array.dtype.kind == "f":
        array = np.where(np.isnan(array), np.nan, array)
    return output["datatype"], output["shape"], array.tobytes()


@settings(FUZZ, max_examples=200)
@given(pair=valid_pairs())
def test_a_valid_request_answers_bit_for_bit_alike_in_json_and_in_binary(
    asgi_client: TestClient, default_model: str, pair: tuple[Request, Request]
) -> None:
    answers = []
    for request in pair:
        body, headers = request.http()
        response = post(asgi_client, body, headers)
        check(response, request, default_model)
        answers.append(response)
    in_json, in_binary = answers
    event(f"status {in_json.status_code}")
    assert in_json.status_code == in_binary.status_code, (in_json.text, in_binary.text)
    if in_json.status_code != 200:
        assert in_json.json() == in_binary.json()
        return
    outputs = [{o["name"]: bits(o) for o in decode_answer(answer)["outputs"]} for answer in answers]
    assert outputs[0] == outputs[1]


def valid_body(n: int = 2) -> bytes:
    inputs = [
        {"name": "key", "datatype": "BYTES", "shape": [n], "data": [f"k{i}" for i in range(n)]}
    ]
    inputs += [{"name": f, "datatype": "FP64", "shape": [n], "data": [1.5] * n} for f in FEATURES]
    return json.dumps({"inputs": inputs}).encode()


@pytest.mark.parametrize("length", ["\xb2", "1\xb2", "\xb9", " \xb3 "])
def test_a_header_length_of_digits_that_are_not_decimal_is_a_400(
    asgi_client: TestClient, length: str
) -> None:
    # str.isdigit() takes the superscripts, which int() refuses: the gate raised, BentoML's
    # traffic layer kept the client waiting for its timeout and then answered nothing.
    response = post(
        asgi_client, valid_body(), {"inference-header-content-length": length.encode("latin-1")}
    )
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]
