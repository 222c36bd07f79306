"""Answer formats: the same checked results written as rows, columns or an Open Inference
Protocol (V2) answer.

Every writer takes a validated request (``ValidBatch``: every key received, in request
order, and the ones refused by validation) and its ``Scored`` results, which
:func:`keyed_serving.serving.reassemble.reassemble_by_key` has already checked key by key. Each
writes exactly one entry per key received: a prediction, or (per-instance mode) the
reason there is none. The HTTP layer picks a writer and sends what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from keyed_serving.lazy import numpy as np
from keyed_serving.model.spec import ModelSpec
from keyed_serving.schemas import ErrorDetail
from keyed_serving.serving.reassemble import Scored
from keyed_serving.serving.v2 import (
    NUMBER_DTYPES,
    RequestedOutput,
    V2Error,
    V2Request,
    encode_bytes,
    encode_texts,
    json_text,
    model_name,
    model_version,
    prediction_datatype,
)
from keyed_serving.serving.validate import ValidBatch

JSON = "application/json"


@dataclass
class Answer:
    body: bytes
    media_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Refusal:
    """Why a request gets no answer, whichever transport carries it: an HTTP status (gRPC
    maps it to a status code, see :mod:`.grpc_v2`), the summary, the details naming each
    instance at fault, and headers (``Retry-After``)."""

    status: int
    summary: str
    details: Sequence[ErrorDetail] = ()
    headers: dict[str, str] = field(default_factory=dict)


def summary(batch: ValidBatch, scored: Scored) -> dict[str, int]:
    failed = len(batch.failures) + scored.failed
    return {"received": batch.received, "predicted": batch.received - failed, "failed": failed}


def keyed_answer(batch: ValidBatch, scored: Scored, spec: ModelSpec) -> Answer:
    """/predict's answer, in the shape of its request: rows or columns."""
    if batch.shape == "columns":
        answer = column_answer(batch, scored, spec.classes)
    else:
        answer = {"predictions": row_answer(batch, scored, spec.classes)}
    body = {"model": spec.tag, **answer, "summary": summary(batch, scored)}
    return Answer(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def row_answer(
    batch: ValidBatch, scored: Scored, classes: Sequence[object] | None
) -> list[dict[str, Any]]:
    """Row format: one entry per instance received, in request order, with its key."""
    labels = [str(label) for label in classes] if classes is not None else None
    probabilities = None if scored.probabilities is None else scored.probabilities.tolist()
    if not batch.failures and not scored.errors and batch.positions is None:
        # Every key predicted, in request order (the usual answer): written in one pass.
        keys, predictions = batch.keys, scored.predictions
        if probabilities is not None and labels is not None:
            return [
                {
                    "key": key,
                    "prediction": prediction,
                    "probabilities": dict(zip(labels, row, strict=True)),
                }
                for key, prediction, row in zip(keys, predictions, probabilities, strict=True)
            ]
        return [
            {"key": key, "prediction": prediction}
            for key, prediction in zip(keys, predictions, strict=True)
        ]
    entries: list[dict[str, Any] | None] = [None] * batch.received
    positions = batch.request_positions
    for row, (position, key, prediction) in enumerate(
        zip(positions, batch.keys, scored.predictions, strict=True)
    ):
        if prediction is None:
            error = scored.errors[row]
            entries[position] = {"key": key, "error": error.model_dump()}
        elif probabilities is not None and labels is not None:
            entries[position] = {
                "key": key,
                "prediction": prediction,
                "probabilities": dict(zip(labels, probabilities[row], strict=True)),
            }
        else:
            entries[position] = {"key": key, "prediction": prediction}
    for failure in batch.failures:
        entries[failure.index] = {"key": failure.key, "error": _error(failure.details)}
    missing = [index for index, entry in enumerate(entries) if entry is None]
    if missing:
        raise ValueError(f"instances at {missing[:5]} have neither a result nor a failure")
    return entries  # type: ignore[return-value]  # no None left, checked above


def column_answer(
    batch: ValidBatch, scored: Scored, classes: Sequence[object] | None
) -> dict[str, Any]:
    """Columnar format: predictions (and a column per class) at the positions of the keys."""
    predictions, probabilities = _at_request_positions(batch, scored)
    # The keys' JSON text as the key checks wrote it, where they did (every key received).
    written = batch.key_column.json if batch.key_column is not None else None
    keys = batch.all_keys if written is None else orjson.Fragment(written)
    answer: dict[str, Any] = {"keys": keys, "predictions": predictions}
    if classes is not None:
        probabilities = _or_nan(probabilities, batch.received, len(classes))
        # NaN where a key has no prediction: serialised as null.
        by_class = np.ascontiguousarray(probabilities.T)
        answer["probabilities"] = {str(label): by_class[i] for i, label in enumerate(classes)}
    answer["errors"] = [{"key": key, "error": error} for _, key, error in _errors(batch, scored)]
    return answer


@dataclass
class OutputTensor:
    """One output of an inference response, whichever transport writes it."""

    name: str
    datatype: str
    shape: list[int]
    values: Any  # a NumPy array, or a list of str (BYTES)
    parameters: dict[str, Any]
    binary: bool | None  # as asked for (None: as the request's binary_data_output says)
    written: bytes | None = None  # the values' bytes already, where they came in so (keys)

    def raw(self) -> bytes:
        """The binary tensor data extension's bytes (and gRPC's raw_output_contents)."""
        if self.written is not None:
            return self.written
        return _binary(self.values, self.datatype)


def v2_outputs(
    request: V2Request, batch: ValidBatch, scored: Scored, spec: ModelSpec
) -> list[OutputTensor]:
    """The outputs of an inference response of the Open Inference Protocol, in the order
    asked for (all of the mode's, by default): ``key`` (as sent, in its datatype),
    ``prediction``, ``probabilities`` ([N, classes], classifiers) and, in per-instance mode,
    ``error`` ("" where predicted)."""
    n = batch.received
    predictions, probabilities = _at_request_positions(batch, scored)
    datatype = prediction_datatype(spec)
    errors = [""] * n
    for position, _, error in _errors(batch, scored):
        errors[position] = f"{error['code']}: {error['message']}"
    classes = [str(label) for label in spec.classes] if spec.classes is not None else []
    tensors: dict[str, tuple[str, list[int], Any, dict[str, Any]]] = {
        "key": (request.key_datatype, [n], batch.all_keys, {}),
        "prediction": (datatype, [n], _predictions(predictions, datatype), {}),
    }
    if spec.classes is not None:
        tensors["probabilities"] = (
            "FP64",
            [n, len(classes)],
            _or_nan(probabilities, n, len(classes)),
            {"classes": json_text(classes)},  # a parameter holds no list: JSON array text
        )
    if batch.errors == "per_instance":
        tensors["error"] = ("BYTES", [n], errors, {})
    wanted = request.outputs or [RequestedOutput(name, None) for name in tensors]
    missing = [output.name for output in wanted if output.name not in tensors]
    if missing:
        raise V2Error(400, f"output(s) {missing} do not apply to this model or request mode")
    # The keys are answered as sent, in request order: where they came in binary, their
    # bytes are the key output's, written again by no one.
    written = {"key": request.key_raw}
    return [
        OutputTensor(output.name, *tensors[output.name], output.binary, written.get(output.name))
        for output in wanted
    ]


def v2_answer(request: V2Request, batch: ValidBatch, scored: Scored, spec: ModelSpec) -> Answer:
    """An inference response of the Open Inference Protocol over HTTP (see ``v2_outputs``):
    outputs asked for as binary go after the JSON header (the binary tensor data
    extension)."""
    outputs, binary_parts = [], []
    for output in v2_outputs(request, batch, scored, spec):
        binary = request.binary_output if output.binary is None else output.binary
        written: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if binary:
            raw = output.raw()
            written["parameters"] = {**output.parameters, "binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            if output.parameters:
                written["parameters"] = output.parameters
            written["data"] = _json_data(output.values)
        outputs.append(written)
    response: dict[str, Any] = {
        "model_name": model_name(spec),
        "model_version": model_version(spec),
    }
    if request.id is not None:
        response["id"] = request.id
    response["parameters"] = summary(batch, scored)
    response["outputs"] = outputs
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return Answer(header)
    return Answer(
        header + b"".join(binary_parts),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _predictions(predictions: list[Any], datatype: str) -> Any:
    """Predictions in the output's datatype; a key without one gets "", 0, False or NaN
    (its ``error`` element says why)."""
    if datatype == "BYTES":
        if all(type(p) is str for p in set(predictions)):  # labels: a few distinct objects
            return predictions
        return ["" if p is None else str(p) for p in predictions]
    complete = type(None) not in set(map(type, predictions))  # every key predicted
    if datatype == "FP64":
        if complete:
            return np.array(predictions, dtype=np.float64)
        return np.array([np.nan if p is None else p for p in predictions], dtype=np.float64)
    if datatype == "BOOL":
        return np.array([bool(p) for p in predictions], dtype=bool)
    if complete:
        return np.array(predictions, dtype=np.int64)
    return np.array([0 if p is None else p for p in predictions], dtype=np.int64)


def _binary(values: Any, datatype: str) -> bytes:
    if datatype == "BYTES":
        if all(type(value) is str for value in set(values)):
            return encode_texts(values)
        return encode_bytes([str(value).encode("utf-8") for value in values])
    if datatype == "BOOL":
        return np.asarray(values, dtype=bool).tobytes()
    return np.ascontiguousarray(values, dtype=NUMBER_DTYPES[datatype]).tobytes()


def _json_data(values: Any) -> Any:
    if isinstance(values, np.ndarray):
        flat = values.reshape(-1)  # row-major, as the protocol writes a tensor in JSON
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            return _with_non_finite(flat)
        return flat
    return values


def _with_non_finite(flat: np.ndarray) -> orjson.Fragment:
    """Numbers written as Triton's JSON writer writes them (rapidjson with
    ``kWriteNanAndInfFlag``): NaN (a failed instance's probabilities and FP64 prediction),
    ``Infinity`` and ``-Infinity`` as bare tokens, where orjson writes ``null``, which the
    protocol's tensor data does not allow. The finite numbers are orjson's, as in an answer
    without NaN."""
    written = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    if not np.isinf(flat).any():  # NaN alone, as failed instances give: every null is one
        return orjson.Fragment(written.replace(b"null", b"NaN"))
    tokens = written[1:-1].split(b",")
    for index in np.flatnonzero(~np.isfinite(flat)).tolist():
        value = flat[index]
        tokens[index] = b"NaN" if np.isnan(value) else b"Infinity" if value > 0 else b"-Infinity"
    return orjson.Fragment(b"[" + b",".join(tokens) + b"]")


def _at_request_positions(batch: ValidBatch, scored: Scored) -> tuple[list[Any], np.ndarray | None]:
    """Predictions (None where there is none) and probability rows (NaN there) at the
    positions of the keys as received."""
    predictions: list[Any] = scored.predictions
    probabilities = scored.probabilities
    if batch.positions is not None:
        predictions = [None] * batch.received
        for row, position in enumerate(batch.positions):
            predictions[position] = scored.predictions[row]
        if scored.probabilities is not None:
            probabilities = np.full((batch.received, scored.probabilities.shape[1]), np.nan)
            probabilities[batch.positions] = scored.probabilities
    return predictions, probabilities


def _or_nan(probabilities: np.ndarray | None, rows: int, classes: int) -> np.ndarray:
    """A classifier's probabilities, all NaN when no row was predicted (every key of the
    request failed): the answer keeps its shape, as for any one key without a prediction."""
    if probabilities is None:
        return np.full((rows, classes), np.nan)
    return np.asarray(probabilities, dtype=np.float64)


def _errors(batch: ValidBatch, scored: Scored) -> list[tuple[int, Any, dict[str, str]]]:
    """(request position, key, {code, message}) of every key without a prediction."""
    positions = batch.request_positions
    errors = [(failure.index, failure.key, _error(failure.details)) for failure in batch.failures]
    errors += [
        (positions[row], batch.keys[row], error.model_dump())
        for row, error in scored.errors.items()
    ]
    errors.sort(key=lambda entry: entry[0])
    return errors


def _error(details: Sequence[ErrorDetail]) -> dict[str, str]:
    return {"code": details[0].type, "message": "; ".join(detail.msg for detail in details)}


def model_error_details(batch: ValidBatch, scored: Scored) -> list[ErrorDetail]:
    """The rows the model could not take, as a rejection's details (all-or-nothing mode)."""
    positions = batch.request_positions
    where = "instances" if batch.shape == "rows" else "keys"
    return [
        ErrorDetail(
            type=error.code,
            msg=error.message,
            loc=[where, positions[row]],
            key=batch.keys[row],
        )
        for row, error in sorted(scored.errors.items())
    ]
