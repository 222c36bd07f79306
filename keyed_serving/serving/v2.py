"""The Open Inference Protocol (KServe V2) with keys: request decoding and documents.

Triton, KServe, MLServer and Seldon speak this protocol; their clients (``tritonclient``,
MLServer's codecs, KServe's SDK) work unchanged against this server. What this project
adds is the key: one input named ``key`` (BYTES or INT64, one element per instance) that
travels with each instance through the micro-batches and comes back as the ``key`` output,
with the same datatype, beside each prediction. For a model with a feature named ``key``,
the key input is ``_key`` instead (the model metadata's ``properties.key_input`` names it).

A request becomes the same ``{"keys", "columns", "errors"}`` body that /predict takes in
its columnar shape, so it passes the same validation, coalescer, runner and key checks.
Its answer is written by :mod:`keyed_serving.serving.answers`. Nothing here knows HTTP beyond the
bytes of a body and the value of one header.

The binary tensor data extension (what ``tritonclient`` sends by default): the JSON header
comes first, ``Inference-Header-Content-Length`` bytes long, then each input's bytes in
input order, each as long as its ``parameters.binary_data_size``. Numbers are
little-endian; a BYTES element is a 4-byte little-endian length and that many bytes.

Missing values: NaN in a number input; an empty BYTES element (or a JSON null) in a
category input, as an empty cell in a CSV.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from keyed_serving.lazy import numpy as np
from keyed_serving.model.spec import ModelSpec
from keyed_serving.serving.validate import read_json

KEY_INPUT = "key"
# The prediction output's datatype by what the model predicts (``ModelSpec.prediction_type``).
PREDICTION_DATATYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "text": "BYTES"}
OUTPUTS = ("key", "prediction", "probabilities", "error")
# Little-endian NumPy dtypes of the protocol's fixed-size datatypes.
NUMBER_DTYPES = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT16": "<i2",
    "INT8": "i1",
    "UINT64": "<u8",
    "UINT32": "<u4",
    "UINT16": "<u2",
    "UINT8": "u1",
}
INTEGER_DATATYPES = frozenset(name for name in NUMBER_DTYPES if "INT" in name)
KEY_DATATYPES = ("BYTES", *sorted(INTEGER_DATATYPES))
ERROR_MODES = ("reject", "per_instance")


class V2Error(Exception):
    """A request the protocol cannot take; answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: as the request's binary_data_output says


@dataclass
class V2Request:
    """A decoded inference request: the /predict columnar body it stands for, and how its
    answer is to be written."""

    id: str | None
    key_datatype: str
    body: dict[str, Any]  # {"keys", "columns", "errors"}, for keyed_serving.serving.validate
    outputs: list[RequestedOutput] | None  # None: every output the mode has
    binary_output: bool  # the request's binary_data_output: the default for every output
    # The key input's elements as they came in binary (BYTES framing, or little-endian
    # numbers of its datatype): the key output's bytes are these, in the same order.
    key_raw: bytes | None = None


def decode_infer_request(
    raw: bytes, header_length: str | None, spec: ModelSpec, max_instances: int
) -> V2Request:
    """An inference request's body (JSON, or JSON and binary tensors) -> ``V2Request``;
    raises ``V2Error`` (400) naming the input at fault."""
    header, binary = _split(raw, header_length)
    try:
        request = read_json(header)  # Python's JSON writer (tritonclient's) writes NaN
    except ValueError as exc:
        raise V2Error(400, f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise V2Error(400, "the inference request must be a JSON object with inputs")
    parameters = _object(request.get("parameters"), "the request's parameters")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(400, "id must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "inputs must be a non-empty list of tensors")
    tensors = _read_tensors(inputs, binary)
    return infer_request(
        request_id, parameters, tensors, request.get("outputs"), spec, max_instances
    )


def infer_request(
    request_id: str | None,
    parameters: dict[str, Any],
    tensors: dict[str, Tensor],
    outputs: Any,
    spec: ModelSpec,
    max_instances: int,
) -> V2Request:
    """The protocol's rules for an inference request, whichever transport brought it (HTTP
    JSON and binary here, gRPC in :mod:`.grpc_v2`): the key input and one input per
    feature, one element each per instance, the error mode and the outputs asked for."""
    errors = parameters.get("errors", "reject")
    if errors not in ERROR_MODES:
        raise V2Error(400, f"parameters.errors must be one of {list(ERROR_MODES)}, got {errors!r}")
    key_name = key_input(spec)
    if key_name not in tensors:
        raise V2Error(
            400,
            f"input {key_name!r} is missing: every instance needs its own key (BYTES or INT64)",
        )
    expected = {key_name, *spec.feature_names}
    unknown = sorted(set(tensors) - expected)
    missing = [name for name in spec.feature_names if name not in tensors]
    if unknown or missing:
        said = [f"{len(unknown)} unknown input(s) {_few(unknown)}" if unknown else ""]
        said += [f"missing input(s) {missing}" if missing else ""]
        raise V2Error(400, f"{'; '.join(s for s in said if s)}; see GET /v2/models/{{name}}")
    count = tensors[key_name].count
    if count > max_instances:
        raise V2Error(400, f"{count} instances sent, at most {max_instances} per request")
    wrong = [t for t in tensors.values() if t.count != count]
    if wrong:
        sizes = ", ".join(f"{t.name!r} has {t.count}" for t in wrong)
        raise V2Error(400, f"input {key_name!r} has {count} elements but {sizes}")
    key_tensor = tensors[key_name]
    if key_tensor.datatype not in KEY_DATATYPES:
        raise V2Error(
            400, f"input {key_name!r} has datatype {key_tensor.datatype}; send BYTES or INT64"
        )
    columns = {}
    for feature in spec.features:
        tensor = tensors[feature.name]
        columns[feature.name] = (
            tensor.numbers(feature.name) if feature.type == "number" else tensor.strings()
        )
    return V2Request(
        id=request_id,
        key_datatype=key_tensor.datatype,
        body={"keys": key_tensor.keys(), "columns": columns, "errors": errors},
        outputs=_requested_outputs(outputs, spec, errors),
        binary_output=bool(_flag(parameters, "binary_data_output", "the request's parameters")),
        key_raw=key_tensor.raw(),
    )


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return raw, b""
    cut = header_length_of(header_length)
    if cut is None or cut > len(raw):
        raise V2Error(
            400,
            f"Inference-Header-Content-Length {header_length!r} is not a length within the "
            f"body's {len(raw)} bytes",
        )
    return raw[:cut], raw[cut:]


def header_length_of(value: str) -> int | None:
    """``Inference-Header-Content-Length`` as a number; None where it is not one. ASCII
    digits only: ``str.isdigit()`` also takes "²", which ``int()`` refuses."""
    digits = value.strip()
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(400, f"{what} must be an object")
    return value


@dataclass
class Tensor:
    name: str
    datatype: str
    count: int
    data: Any  # a NumPy array (binary numbers), BytesElements (binary BYTES) or JSON data

    def raw(self) -> bytes | None:
        """The elements' bytes as the binary extension frames them, where they came so."""
        if isinstance(self.data, BytesElements):
            return self.data.framed
        if isinstance(self.data, np.ndarray):
            return self.data.tobytes()
        return None

    def keys(self) -> list[Any]:
        if self.datatype != "BYTES":
            if isinstance(self.data, np.ndarray):  # binary: of its datatype already
                return list(self.data.tolist())
            # JSON: each key is echoed in this datatype, so it must be one of its integers
            # (a "1" in an INT64 tensor would come back as 1, another key).
            bounds = np.iinfo(NUMBER_DTYPES[self.datatype])
            kinds = set(map(type, self.data))
            if not kinds <= {int} or (
                self.data and (min(self.data) < bounds.min or max(self.data) > bounds.max)
            ):
                raise V2Error(
                    400,
                    f"input {self.name!r} is {self.datatype}: its elements must be integers "
                    f"from {bounds.min} to {bounds.max} (send other keys as BYTES)",
                )
            return list(self.data)
        if isinstance(self.data, BytesElements):
            return self.data.texts(self.name)
        kinds = set(map(type, self.data))
        if kinds <= {str}:  # JSON strings: the keys as they are
            return list(self.data)
        keys = [_text(value, self.name) for value in self.data]
        if any(not isinstance(key, str) for key in keys if key is not None):
            raise V2Error(400, f"input {self.name!r} is BYTES: its elements must be strings")
        return keys

    def numbers(self, feature: str) -> np.ndarray:
        """A number input as the float64 column the model frame takes, NaN where missing
        (the protocol's missing value, and a JSON null); validation refuses the infinities
        and magnitudes the model cannot take, by key. An array from the body to the frame:
        no Python float per element."""
        if self.datatype not in NUMBER_DTYPES:
            raise V2Error(
                400,
                f"input {self.name!r} is a number feature: send FP64, FP32, INT64 or INT32, "
                f"not {self.datatype}",
            )
        if isinstance(self.data, np.ndarray):  # binary: of its datatype already
            return self.data.astype(np.float64)
        values = _as_datatype_all(self.data, self.datatype, self.name)
        return np.array(values, dtype=np.float64)  # None -> NaN

    def strings(self) -> list[str | None]:
        if self.datatype != "BYTES":
            raise V2Error(
                400, f"input {self.name!r} is a category feature: send BYTES, not {self.datatype}"
            )
        if isinstance(self.data, BytesElements):
            return [text or None for text in self.data.texts(self.name)]
        return [_text(value, self.name) or None for value in self.data]


def _as_datatype_all(data: list[Any], datatype: str, name: str) -> list[Any]:
    """``_as_datatype`` of every element, a column at a time where its elements' types
    allow (an element at a time was 55 ms for 10,000 rows of four FP64 features); an element
    at a time otherwise, which says which element does not fit."""
    kinds = set(map(type, data))
    dtype = np.dtype(NUMBER_DTYPES[datatype])
    if dtype.kind in "iu":
        bounds = np.iinfo(dtype)
        if kinds <= {int} and (not data or (bounds.min <= min(data) and max(data) <= bounds.max)):
            return data
    elif kinds <= {float} and dtype.itemsize == 8:
        return data
    elif kinds <= {float, int} and dtype.itemsize < 8:
        try:
            wide = np.asarray(data, dtype=np.float64)
        except OverflowError:
            wide = None
        if wide is not None:
            with np.errstate(over="ignore"):
                held = wide.astype(dtype)
            if not np.any(np.isinf(held) & np.isfinite(wide)):
                return list(held.astype(np.float64).tolist())
    return [_as_datatype(value, datatype, name) for value in data]


def _as_datatype(value: Any, datatype: str, name: str) -> Any:
    """A JSON element of a number input as its declared datatype holds it, so that a request
    answers the same in JSON as in binary: an integer type's element must be one of its
    integers (2.6 is not an INT32, nor 300 a UINT8), a float type's is rounded to that type
    (an FP32 0.1 is the float32 nearest 0.1). Anything else is a 400 naming the input. A
    JSON null stays missing."""
    if value is None:
        return None
    dtype = np.dtype(NUMBER_DTYPES[datatype])
    if dtype.kind in "iu":
        bounds = np.iinfo(dtype)
        if type(value) is not int or not bounds.min <= value <= bounds.max:
            raise V2Error(
                400,
                f"input {name!r} is {datatype}: its elements must be integers from "
                f"{bounds.min} to {bounds.max}, not {_shown(value)}",
            )
        return value
    if type(value) not in (int, float):
        raise V2Error(400, f"input {name!r} is {datatype}: its elements must be numbers, not "
                      f"{_shown(value)}")  # fmt: skip
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    with np.errstate(over="ignore"):  # beyond the type's range: refused just below
        held = float(np.array(number, dtype=dtype)) if dtype.itemsize < 8 else number
    if math.isinf(held) and not math.isinf(float(value) if type(value) is float else 0.0):
        raise V2Error(400, f"input {name!r} is {datatype}: {_shown(value)} is beyond its range")
    return held


def _few(names: list[str], shown: int = 5) -> str:
    """A few names of a long list, and how many more: an error message stays short."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{names[:shown]}{more}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value: Any, name: str) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise V2Error(400, f"input {name!r}: an element is not UTF-8 text: {exc}") from None
    return value  # JSON: a string (or whatever was sent, judged by validation)


def _read_tensors(inputs: list[Any], binary: bytes) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    offset = 0
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise V2Error(400, f"inputs[{index}] must be an object {{name, datatype, shape, data}}")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        count = tensor_count(index, name, datatype, shape, tensors)
        name, datatype = str(name), str(datatype)  # checked just above
        parameters = _object(tensor.get("parameters"), f"input {name!r}'s parameters")
        size = parameters.get("binary_data_size")
        if size is not None and "data" in tensor:
            raise V2Error(
                400, f"input {name!r} has both data and parameters.binary_data_size: send one"
            )
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise V2Error(
                    400,
                    f"input {name!r}: binary_data_size {size!r} does not fit in the "
                    f"{len(binary) - offset} binary bytes left",
                )
            data: Any = binary_elements(binary[offset : offset + size], datatype, count, name)
            offset += size
        elif "data" in tensor:
            data = _json_elements(tensor["data"], count, name)
        else:
            raise V2Error(400, f"input {name!r} has neither data nor parameters.binary_data_size")
        tensors[name] = Tensor(name, datatype, count, data)
    if offset != len(binary):
        raise V2Error(
            400,
            f"the inputs' binary_data_size add up to {offset} bytes but {len(binary)} binary "
            "bytes follow the JSON header",
        )
    return tensors


def tensor_count(index: int, name: Any, datatype: Any, shape: Any, seen: Any) -> int:
    """Elements of input ``index``, after checking its name (given, not one of ``seen``),
    datatype (one this server takes) and shape."""
    if not isinstance(name, str) or not name:
        raise V2Error(400, f"inputs[{index}] has no name")
    if name in seen:
        raise V2Error(400, f"input {name!r} is sent twice")
    if not isinstance(datatype, str) or (datatype not in NUMBER_DTYPES and datatype != "BYTES"):
        raise V2Error(400, f"input {name!r}: datatype {datatype!r} is not one this server takes")
    return _count(shape, name)


def _count(shape: Any, name: str) -> int:
    """Elements of a [N] or [N, 1] tensor: one per instance."""
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(type(d) is int and d >= 0 for d in shape)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise V2Error(400, f"input {name!r}: shape {shape!r}; send [N] or [N, 1], one per instance")
    return int(shape[0])


_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class BytesElements:
    """A BYTES tensor's elements as they came in the binary framing: the framed bytes and
    where each element starts and ends in them. ``framed`` is also how the elements are
    answered again (an echoed key output is these very bytes)."""

    framed: bytes
    starts: list[int]
    ends: list[int]

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Any:
        framed = self.framed
        return (framed[a:b] for a, b in zip(self.starts, self.ends, strict=True))

    def texts(self, name: str) -> list[str]:
        """The elements as text (UTF-8); a 400 naming the input where one is not."""
        framed, starts, ends = self.framed, self.starts, self.ends
        try:
            decoded = framed.decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
        if decoded is not None and len(decoded) == len(framed):
            # ASCII, as keys mostly are (and their lengths, each under 128): slices of one
            # decoded string, at the same offsets as in the bytes
            return [decoded[a:b] for a, b in zip(starts, ends, strict=True)]
        return [_text(framed[a:b], name) for a, b in zip(starts, ends, strict=True)]


def binary_elements(raw: bytes, datatype: str, count: int, name: str) -> Any:
    if datatype == "BYTES":
        # One pass, each element's length read where the one before it ends: a sequential
        # scan, kept to a few operations per element.
        starts: list[int] = []
        ends: list[int] = []
        unpack, size, offset = _LENGTH.unpack_from, len(raw), 0
        while offset + 4 <= size:
            start = offset + 4
            offset = start + unpack(raw, offset)[0]
            starts.append(start)
            ends.append(offset)
        if offset != size or len(starts) != count:
            raise V2Error(
                400,
                f"input {name!r}: its {len(raw)} binary bytes are not {count} BYTES elements "
                "(each a 4-byte little-endian length, then that many bytes)",
            )
        return BytesElements(bytes(raw), starts, ends)
    dtype = np.dtype(NUMBER_DTYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise V2Error(
            400,
            f"input {name!r}: {len(raw)} binary bytes for {count} {datatype} elements "
            f"({count * dtype.itemsize} expected)",
        )
    return np.frombuffer(raw, dtype=dtype)


def _json_elements(data: Any, count: int, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise V2Error(400, f"input {name!r}: data must be a list")
    flat = data
    if list in set(map(type, data)):  # [[a], [b]] for a [N, 1] tensor
        if not all(isinstance(item, list) and len(item) == 1 for item in data):
            raise V2Error(400, f"input {name!r}: data must be [a, b, ...] or [[a], [b], ...]")
        flat = [item[0] for item in data]
    if len(flat) != count:
        raise V2Error(400, f"input {name!r}: {len(flat)} data elements for shape [{count}]")
    return flat


def _requested_outputs(outputs: Any, spec: ModelSpec, errors: str) -> list[RequestedOutput] | None:
    """The outputs asked for, refused here, before anything is predicted, when the model or
    the error mode has no such output."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise V2Error(400, "outputs must be a list of {name, parameters}")
    requested: list[RequestedOutput] = []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise V2Error(400, f"outputs[{index}] must be an object with a name")
        if output["name"] not in OUTPUTS:
            raise V2Error(400, f"unknown output {output['name']!r}; outputs are {list(OUTPUTS)}")
        if output["name"] == "probabilities" and spec.classes is None:
            raise V2Error(
                400, "output 'probabilities' is a classifier's; this model is a regressor"
            )
        if output["name"] == "error" and errors != "per_instance":
            raise V2Error(
                400,
                "output 'error' is written in per-instance mode only: send "
                '"parameters": {"errors": "per_instance"}',
            )
        if output["name"] in {r.name for r in requested}:
            raise V2Error(400, f"output {output['name']!r} is requested twice")
        what = f"output {output['name']!r}'s parameters"
        parameters = _object(output.get("parameters"), what)
        if "classification" in parameters:
            raise V2Error(
                400,
                f"{what}: Triton's classification extension (top-k classes, tritonclient's "
                "class_count) is not served; ask for output 'probabilities', every class's "
                "probability in the metadata's class order",
            )
        requested.append(RequestedOutput(output["name"], _flag(parameters, "binary_data", what)))
    return requested


def _flag(parameters: dict[str, Any], name: str, what: str) -> bool | None:
    """A boolean parameter (None where absent): the string "false" is not false."""
    if name not in parameters:
        return None
    value = parameters[name]
    if type(value) is not bool:
        raise V2Error(400, f"{what}: {name} must be true or false, not {_shown(value)}")
    return value


# ---- documents -------------------------------------------------------------------------


def model_name(spec: ModelSpec) -> str:
    return spec.tag.split(":", 1)[0]


def model_version(spec: ModelSpec) -> str:
    return spec.tag.split(":", 1)[1] if ":" in spec.tag else ""


def key_input(spec: ModelSpec) -> str:
    """The name of the key input: ``key``, or, where a feature has that name, ``_key``
    (underscores added until no feature has it)."""
    name, features = KEY_INPUT, set(spec.feature_names)
    while name in features:
        name = "_" + name
    return name


def prediction_datatype(spec: ModelSpec) -> str:
    """BYTES for text labels, INT64 for integer labels, BOOL, or FP64 (numbers)."""
    return PREDICTION_DATATYPES[spec.prediction_type]


def unknown_model(spec: ModelSpec, name: str | None, version: str | None) -> str:
    served = f"{model_name(spec)} version {model_version(spec)}"
    asked = f"{name}" + (f" version {version}" if version is not None else "")
    return f"no model {asked} here; this server serves {served}"


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "keyed-serving", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    """Inputs ``key`` (see ``key_input``) and one per feature, outputs ``key``, ``prediction``,
    ``probabilities`` (classifiers) and ``error``, and the model's facts as ``properties``."""
    inputs = [{"name": key_input(spec), "datatype": "BYTES", "shape": [-1]}]
    inputs += [
        {"name": f.name, "datatype": "FP64" if f.type == "number" else "BYTES", "shape": [-1]}
        for f in spec.features
    ]
    outputs: list[dict[str, Any]] = [
        {"name": "key", "datatype": "BYTES", "shape": [-1]},
        {"name": "prediction", "datatype": prediction_datatype(spec), "shape": [-1]},
    ]
    classes = class_labels(spec)
    if spec.task == "classification" and classes is not None:
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(classes)]})
    outputs.append({"name": "error", "datatype": "BYTES", "shape": [-1]})
    return {
        "name": model_name(spec),
        "versions": [model_version(spec)],
        "platform": "keyed-serving_sklearn",
        "inputs": inputs,
        "outputs": outputs,
        "properties": model_properties(spec),
    }


def model_properties(spec: ModelSpec) -> dict[str, str]:
    """The model's facts as the metadata's ``properties``, which the protocol types as
    strings (REST: an object of strings; gRPC: ``map<string, string> properties``): ``task``,
    ``key_input``, and as JSON array text ``key_datatypes``, ``errors`` (the error modes) and
    ``classes`` (classifiers, in the order of the ``probabilities`` columns)."""
    properties = {
        "task": spec.task,
        "key_input": key_input(spec),
        "key_datatypes": json_text(list(KEY_DATATYPES)),
        "errors": json_text(list(ERROR_MODES)),
    }
    classes = class_labels(spec)
    if classes is not None:
        properties["classes"] = json_text(classes)
    return properties


def class_labels(spec: ModelSpec) -> list[str] | None:
    """The class labels as text, in the order of the ``probabilities`` columns."""
    return [str(label) for label in spec.classes] if spec.classes is not None else None


def json_text(values: list[str]) -> str:
    """A list as a protocol parameter can hold it (a string, number or boolean; the gRPC
    ``InferParameter`` holds no list): its JSON array text, ``["a","b"]``."""
    return orjson.dumps(values).decode()


def encode_bytes(values: Sequence[bytes]) -> bytes:
    """BYTES elements in the binary extension's framing."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return frame(b"".join(values), np.cumsum(lengths))


def encode_texts(values: Sequence[str]) -> bytes:
    """Text elements (UTF-8) in the binary extension's framing: ASCII text, as keys and
    labels mostly are, in a few passes over the whole column rather than one per element."""
    text = "".join(values)
    encoded = text.encode("utf-8")
    if len(encoded) != len(text):
        return encode_bytes([value.encode("utf-8") for value in values])
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return frame(encoded, np.cumsum(lengths))


def frame(payload: bytes, ends: np.ndarray) -> bytes:
    """Elements held end to end in ``payload`` (element i ends at ``ends[i]``), each put
    after its 4-byte little-endian length."""
    n = len(ends)
    lengths = np.diff(ends, prepend=0)
    if n and (lengths.min() < 0 or ends[-1] != len(payload) or lengths.max() >= 2**32):
        raise ValueError("element ends do not fit the payload")
    out = np.empty(len(payload) + 4 * n, dtype=np.uint8)
    headers = ends - lengths + 4 * np.arange(n)  # where each element's length goes
    where = (headers[:, None] + np.arange(4)).reshape(-1)
    out[where] = lengths.astype("<u4").view(np.uint8)
    kept = np.ones(len(out), dtype=bool)
    kept[where] = False
    out[kept] = np.frombuffer(payload, dtype=np.uint8)
    return out.tobytes()
