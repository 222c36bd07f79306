"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), with keys.

Each entry worker serves it on ``KEYED_GRPC_PORT`` beside HTTP, in the same event loop; the
port is bound with SO_REUSEPORT, so the kernel spreads connections over the workers. The
stubs are generated at build time from the protocol's own ``.proto`` (see setup.py and
:mod:`keyed_serving.serving.proto`).

Nothing here holds a rule of its own. A ``ModelInfer`` passes the same stages as an HTTP
inference request: the protocol's rules (:func:`.v2.infer_request`), the entry's ``score``
(validate, runner micro-batches, keys checked on the way back), and the outputs
(:func:`.answers.v2_outputs`), written as ``raw_output_contents``. The same gate applies:
the bearer token (``authorization`` metadata), the message and value bounds, and the
concurrency and body budget, counted together with HTTP's (:class:`.admission.InFlight`:
a call past the limit waits for a turn within its deadline, the caller's if shorter). A
refusal is the status code its HTTP status maps to, with HTTP's message; overload and an
unavailable runner carry a retry hint (``retry-after`` seconds and gRPC's own
``grpc-retry-pushback-ms``) in the trailing metadata.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from keyed_serving.model.spec import ModelSpec
from keyed_serving.serving.admission import MEMORY_FULL, InFlight, deadline
from keyed_serving.serving.answers import Refusal, summary, v2_outputs
from keyed_serving.serving.http import request_id, request_id_for
from keyed_serving.serving.proto import open_inference_grpc_pb2 as pb
from keyed_serving.serving.proto import open_inference_grpc_pb2_grpc as pb_grpc
from keyed_serving.serving.reassemble import Scored
from keyed_serving.serving.v2 import (
    Tensor,
    V2Error,
    V2Request,
    binary_elements,
    infer_request,
    model_metadata,
    model_name,
    model_version,
    server_metadata,
    tensor_count,
    unknown_model,
)
from keyed_serving.serving.validate import ValidBatch

logger = logging.getLogger("keyed_serving")

# The status code of each HTTP status this server answers with.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Where InferTensorContents holds the elements of each datatype (FP16 has no field: its
# elements come in raw_input_contents only).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# The capture's source column for this route (keyed_serving.capture.layout.SOURCE).
CAPTURE_SOURCE = "v2_grpc"


class Entry(Protocol):
    """What the endpoint needs of the entry service (service.py's ``KeyedPrediction``)."""

    spec: ModelSpec

    async def score(
        self, body: Any, *, name_first: bool, source: str, answer_id: str | None = None
    ) -> tuple[ValidBatch, Scored] | Refusal: ...

    async def ready(self) -> bool: ...


@dataclass(frozen=True)
class Gate:
    """The HTTP gate's bounds (service.py's ``GATE``), as they apply to a gRPC call."""

    api_token: str | None
    max_body_bytes: int
    max_body_values: int
    body_budget_bytes: int
    retry_after_s: int
    deadline_s: float
    counts: InFlight

    def max_message_bytes(self) -> int:
        return min(self.max_body_bytes, self.body_budget_bytes)


def _time_remaining(context: Any) -> float:
    """Seconds left of the caller's deadline (infinite without one)."""
    remaining = context.time_remaining()
    return float("inf") if remaining is None else float(remaining)


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.summary)
        self.refusal = refusal


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs for the one model this server serves."""

    def __init__(self, entry: Entry, gate: Gate, server_version: str, max_instances: int) -> None:
        self.entry = entry
        self.gate = gate
        self.server_version = server_version
        self.max_instances = max_instances
        self.token = f"Bearer {gate.api_token}".encode() if gate.api_token else None
        self.retry = {"Retry-After": str(gate.retry_after_s)}

    # Probes, open to all as over HTTP (/v2/health/live, /v2/health/ready).
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=await self.entry.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def ready() -> Any:
            self._served(request.name, request.version)
            return pb.ModelReadyResponse(ready=await self.entry.ready())

        return await self._call(context, ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            return pb.ServerMetadataResponse(**server_metadata(self.server_version))

        return await self._call(context, metadata)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            self._served(request.name, request.version)
            return metadata_response(model_metadata(self.entry.spec))

        return await self._call(context, metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def infer() -> Any:
            self._served(request.model_name, request.model_version)
            if _values_in(request) > self.gate.max_body_values:
                raise Refused(
                    Refusal(
                        413,
                        f"request with more than {self.gate.max_body_values} values in its "
                        "tensor contents; send raw_input_contents, or split the instances "
                        "over several requests",
                    )
                )
            try:
                decoded = decode_request(request, self.entry.spec, self.max_instances)
            except V2Error as exc:
                raise Refused(Refusal(exc.status, exc.message)) from None
            # Captured (KEYED_CAPTURE_DIR) under the V2 request's own id if it has one (the
            # answer echoes it), else the x-request-id of the call (sent back in its
            # trailing metadata: the caller's, or a fresh one).
            outcome = await self.entry.score(
                decoded.body,
                name_first=True,
                source=CAPTURE_SOURCE,
                answer_id=decoded.id or request_id.get(),
            )
            if isinstance(outcome, Refusal):
                raise Refused(outcome)
            return encode_response(decoded, *outcome, self.entry.spec)

        return await self._call(context, infer, admit=request)

    async def _call(
        self, context: Any, work: Callable[[], Awaitable[Any]], admit: Any = None
    ) -> Any:
        """One RPC through the gate: the token, and for an inference request (``admit``)
        the concurrency and body budget, shared with HTTP. A ``Refused`` raised by ``work``
        ends the call with its status, with a retry hint where retrying helps."""
        metadata = dict(context.invocation_metadata() or ())
        rid = request_id_for(str(metadata.get("x-request-id", "")))
        token = request_id.set(rid)
        reserved: int | None = None
        ends = time.monotonic() + min(self.gate.deadline_s, _time_remaining(context))
        turn = deadline.set(ends)
        try:
            try:
                self._check_token(metadata)
                if admit is not None:
                    reserved = await self._admit(admit, ends)
                answer = await work()
                context.set_trailing_metadata((("x-request-id", rid),))
                return answer
            except Refused as exc:
                refusal = exc.refusal
            except Exception:
                logger.exception("answering INTERNAL to a gRPC call")
                refusal = Refusal(500, "internal error; the server's log says more")
        finally:
            if reserved is not None:
                self.gate.counts.leave()
                self.gate.counts.release(reserved)
            deadline.reset(turn)
            request_id.reset(token)
        trailing = [("x-request-id", rid)]
        if "Retry-After" in refusal.headers:
            seconds = refusal.headers["Retry-After"]
            trailing += [("retry-after", seconds), ("grpc-retry-pushback-ms", f"{seconds}000")]
        context.set_trailing_metadata(tuple(trailing))
        await context.abort(
            STATUS_CODES.get(refusal.status, grpc.StatusCode.UNKNOWN), refusal.summary
        )

    def _check_token(self, metadata: dict[str, Any]) -> None:
        if self.token is not None:
            offered = str(metadata.get("authorization", "")).encode()
            if not hmac.compare_digest(offered, self.token):
                raise Refused(Refusal(401, "missing or wrong bearer token"))

    async def _admit(self, request: Any, ends: float) -> int:
        """Counts the request in, as the HTTP gate does and in the same counts, waiting for
        a turn until ``ends`` if need be; its size is what it holds of the body budget. The
        message is already in memory: it holds its bytes while it waits."""
        gate, counts = self.gate, self.gate.counts
        size = int(request.ByteSize())
        if not counts.reserve(size, gate.body_budget_bytes):
            raise Refused(Refusal(429, f"{MEMORY_FULL}; retry later", headers=self.retry))
        try:
            refused = await counts.enter(ends)
        except BaseException:  # the call was cancelled while it waited
            counts.release(size)
            raise
        if refused is not None:
            counts.release(size)
            said = f"{refused.reason}; retry later"
            raise Refused(Refusal(refused.status, said, headers=self.retry))
        return size

    def _served(self, name: str, version: str) -> None:
        spec = self.entry.spec
        if name != model_name(spec) or version not in ("", model_version(spec)):
            raise Refused(Refusal(404, unknown_model(spec, name, version or None)))


# ---- messages <-> the protocol's stages -------------------------------------------------


def decode_request(request: Any, spec: ModelSpec, max_instances: int) -> V2Request:
    """A ``ModelInferRequest`` -> ``V2Request``, through the same rules as HTTP's JSON and
    binary bodies; raises ``V2Error`` naming the input at fault."""
    if not request.inputs:
        raise V2Error(400, "inputs must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise V2Error(
            400,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "send one per input, or none",
        )
    tensors: dict[str, Tensor] = {}
    for index, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        count = tensor_count(index, name, datatype, list(tensor.shape), tensors)
        filled = [field.name for field, _ in tensor.contents.ListFields()]
        if raw:
            if filled:
                raise V2Error(400, f"input {name!r} has contents and raw_input_contents: send one")
            data: Any = binary_elements(raw[index], datatype, count, name)
        else:
            field = CONTENTS_FIELDS.get(datatype)
            if field is None or filled not in ([], [field]):
                where = f"contents.{field}" if field else "raw_input_contents"
                raise V2Error(400, f"input {name!r} is {datatype}: send its elements in {where}")
            data = list(getattr(tensor.contents, field))
            if len(data) != count:
                raise V2Error(
                    400,
                    f"input {name!r}: {len(data)} elements in contents.{field} for shape "
                    f"{list(tensor.shape)}",
                )
        tensors[name] = Tensor(name, datatype, count, data)
    outputs = [
        {"name": output.name, "parameters": parameters_of(output.parameters)}
        for output in request.outputs
    ]
    return infer_request(
        request.id or None,
        parameters_of(request.parameters),
        tensors,
        outputs or None,
        spec,
        max_instances,
    )


def encode_response(infer: V2Request, batch: ValidBatch, scored: Scored, spec: ModelSpec) -> Any:
    """The outputs HTTP would answer (``v2_outputs``), as a ``ModelInferResponse`` with
    ``raw_output_contents`` (as Triton answers; tritonclient and KServe's SDK read it)."""
    response = pb.ModelInferResponse(
        model_name=model_name(spec), model_version=model_version(spec), id=infer.id or ""
    )
    for name, count in summary(batch, scored).items():
        response.parameters[name].int64_param = count
    for output in v2_outputs(infer, batch, scored, spec):
        tensor = response.outputs.add(name=output.name, datatype=output.datatype)
        tensor.shape.extend(output.shape)
        for name, value in output.parameters.items():
            set_parameter(tensor.parameters[name], value)
        response.raw_output_contents.append(output.raw())
    return response


def metadata_response(metadata: dict[str, Any]) -> Any:
    """``v2.model_metadata``'s document as a ``ModelMetadataResponse``."""
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for side in ("inputs", "outputs"):
        for tensor in metadata[side]:
            getattr(response, side).add(
                name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
            )
    for name, value in metadata.get("properties", {}).items():
        response.properties[name] = value
    return response


def parameters_of(parameters: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as the JSON parameters it stands for."""
    return {
        name: getattr(value, value.WhichOneof("parameter_choice"))
        if value.WhichOneof("parameter_choice")
        else None
        for name, value in parameters.items()
    }


def set_parameter(parameter: Any, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        raise TypeError(f"a parameter is a string, number or boolean, not {type(value).__name__}")


def _values_in(request: Any) -> int:
    """The Python values a request's tensor contents decode into (raw contents are bounded
    by their sizes): the gRPC side of the HTTP gate's JSON-value bound."""
    values = len(request.inputs)
    for tensor in request.inputs:
        for _, elements in tensor.contents.ListFields():
            values += len(elements)
    return values


def http_host(argv: Sequence[str] | None = None) -> str | None:
    """The host the HTTP server of this worker listens on: BentoML starts a worker with
    ``--fd N``, the socket it serves HTTP on (``_bentoml_impl/worker/service.py``). None
    where there is no such socket (a test's in-process service)."""
    args = list(sys.argv if argv is None else argv)
    if "--fd" not in args[:-1]:
        return None
    try:
        fd = int(args[args.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as listening:
            return str(listening.getsockname()[0])
    except (ValueError, OSError):
        return None


async def start_server(
    servicer: InferenceServicer, host: str, port: int, gate: Gate
) -> grpc.aio.Server:
    """The protocol's gRPC server on ``host:port`` in the running event loop, bound with
    SO_REUSEPORT (every entry worker binds the same port)."""
    limit = gate.max_message_bytes()
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC cannot listen on {address}")
    await server.start()
    logger.info("Open Inference Protocol over gRPC on %s", address)
    return server
