"""The gRPC load: the workloads' V2 requests as ``ModelInferRequest`` messages, driven by
asyncio clients in several processes, every answer checked key by key (wrk cannot speak
gRPC; this is the gRPC side of bench/wrk/keyed.lua).

    python bench/grpc_load.py TARGET MODEL PREDICTION_OUTPUT BODIES --streams 64 --seconds 20

The request is the one tritonclient sends for the HTTP bench's V2 body: the key as a BYTES
input and one FP64 input per feature, all in ``raw_input_contents`` (each BYTES element a
4-byte little-endian length, then its bytes), the request parameter ``content_type: pd``,
and the outputs asked for by name: ``key`` and the prediction (ours: ``prediction``,
MLServer's peer: ``predict``). Messages are serialised once, before the load; the driver
sends bytes and times each call from send to the decoded answer.

The streams are spread over ``--processes`` client processes (one asyncio loop each,
``--streams-per-channel`` streams on each HTTP/2 connection), so that one Python process
is not the bottleneck; the driver's own CPU time is measured and reported beside the
results. An answer counts as checked when its keys and predictions are those of the body
it answers (read from the .expected file the HTTP bench writes), mismatched otherwise; a
call that ends with a status other than OK counts as failed, by its status code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _pb() -> Any:
    from tritonclient.grpc import service_pb2

    return service_pb2


def bytes_tensor(values: list[str]) -> bytes:
    """BYTES elements as raw contents: a 4-byte little-endian length, then the bytes."""
    parts = []
    for value in values:
        data = value.encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def read_bytes_tensor(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out.append(raw[offset : offset + length].decode())
        offset += length
    return out


def infer_request(model: str, body: dict[str, Any], outputs: list[str]) -> bytes:
    """A workload's V2 JSON body as the serialised ``ModelInferRequest`` tritonclient sends."""
    import numpy as np

    pb = _pb()
    request = pb.ModelInferRequest(model_name=model)
    for name, value in body.get("parameters", {}).items():
        request.parameters[name].string_param = value
    for tensor in body["inputs"]:
        message = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"])
        message.shape.extend(tensor["shape"])
        if tensor["datatype"] == "BYTES":
            request.raw_input_contents.append(bytes_tensor(tensor["data"]))
        else:
            request.raw_input_contents.append(np.asarray(tensor["data"], "<f8").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return bytes(request.SerializeToString())


def output_values(response: Any, name: str) -> list[Any] | None:
    """An output's elements, from ``raw_output_contents`` or from ``contents``."""
    import numpy as np

    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        if response.raw_output_contents:
            raw = response.raw_output_contents[index]
            if tensor.datatype == "BYTES":
                return read_bytes_tensor(raw)
            dtype = {"INT64": "<i8", "INT32": "<i4", "FP64": "<f8", "FP32": "<f4", "BOOL": "?"}
            return list(np.frombuffer(raw, dtype[tensor.datatype]).tolist())
        contents = tensor.contents
        for _, values in contents.ListFields():
            return [v.decode() if isinstance(v, bytes) else v for v in values]
        return []
    return None


def load_bodies(files: Path, model: str, outputs: list[str]) -> list[tuple[bytes, Any]]:
    """(serialised request, expected (keys, predictions)) per body of a V2 workload."""
    bodies = Path(f"{files}.bodies").read_text().splitlines()
    expected = Path(f"{files}.expected").read_text().splitlines()
    prepared = []
    for body, line in zip(bodies, expected, strict=True):
        keys, predictions = line.split("|", 1)
        want = (json.loads(keys), [str(p) for p in json.loads(predictions)])
        prepared.append((infer_request(model, json.loads(body), outputs), want))
    return prepared


async def _drive(
    target: str,
    prepared: list[tuple[bytes, Any]],
    outputs: list[str],
    streams: int,
    per_channel: int,
    warmup: float,
    seconds: float,
    offset: int,
) -> dict[str, Any]:
    import grpc

    pb = _pb()
    options = [
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),  # a connection of each channel's own
    ]
    channels = [
        grpc.aio.insecure_channel(target, options=options)
        for _ in range(max(1, -(-streams // per_channel)))
    ]
    calls = [
        channel.unary_unary(
            METHOD,
            request_serializer=None,  # bytes as they are
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for channel in channels
    ]
    for channel in channels:
        await channel.channel_ready()
    key_name, prediction_name = outputs
    latencies: list[float] = []
    counts = {"checked": 0, "mismatched": 0, "failed": 0}
    statuses: dict[str, int] = {}
    measuring = False
    stop_at = 0.0

    async def stream(i: int) -> None:
        call = calls[i % len(calls)]
        n = offset + i * 7919
        while time.monotonic() < stop_at:
            n += 1
            body, (keys, predictions) = prepared[n % len(prepared)]
            started = time.perf_counter()
            try:
                response = await call(body, timeout=30)
            except grpc.aio.AioRpcError as exc:
                if measuring:
                    counts["failed"] += 1
                    code = exc.code().name
                    statuses[code] = statuses.get(code, 0) + 1
                continue
            got_keys = output_values(response, key_name)
            got = output_values(response, prediction_name)
            elapsed = time.perf_counter() - started
            if not measuring:
                continue
            latencies.append(elapsed)
            ok = got_keys == keys and got is not None and [str(p) for p in got] == predictions
            counts["checked" if ok else "mismatched"] += 1

    stop_at = time.monotonic() + warmup
    await asyncio.gather(*(stream(i) for i in range(streams)))
    measuring = True
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(*(stream(i) for i in range(streams)))
    duration = time.monotonic() - started
    for channel in channels:
        await channel.close()
    return {**counts, "statuses": statuses, "latencies": latencies, "duration_s": duration}


def _process(args: tuple[Any, ...]) -> dict[str, Any]:
    target, files, model, outputs, streams, per_channel, warmup, seconds, offset = args
    prepared = load_bodies(Path(files), model, outputs)
    cpu0 = time.process_time()
    result = asyncio.run(
        _drive(target, prepared, outputs, streams, per_channel, warmup, seconds, offset)
    )
    result["cpu_s"] = time.process_time() - cpu0
    return result


def drive(
    target: str,
    files: Path,
    model: str,
    outputs: list[str],
    streams: int,
    seconds: float,
    warmup: float = 5.0,
    processes: int = 2,
    per_channel: int = 8,
) -> dict[str, Any]:
    """Runs the load; a summary in the wrk script's shape (checked, mismatched, failed,
    percentiles, duration_s, statuses) plus ``client_cpu_s`` over the whole run (warm-up
    included: the share over the measured part is ``client_cpu_s / (warmup + duration)``)."""
    processes = max(1, min(processes, streams))
    shares = [
        streams // processes + (1 if p < streams % processes else 0) for p in range(processes)
    ]
    jobs = [
        (target, str(files), model, outputs, share, per_channel, warmup, seconds, p * 104729)
        for p, share in enumerate(shares)
    ]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.map(_process, jobs)
    latencies = sorted(x for part in parts for x in part["latencies"])
    statuses: dict[str, int] = {}
    for part in parts:
        for code, n in part["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n

    def pct(q: float) -> float:
        return (
            1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0
        )

    duration = max(part["duration_s"] for part in parts)
    cpu = sum(part["cpu_s"] for part in parts)
    return {
        "checked": sum(part["checked"] for part in parts),
        "mismatched": sum(part["mismatched"] for part in parts),
        "failed": sum(part["failed"] for part in parts),
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        "timeouts": statuses.get("DEADLINE_EXCEEDED", 0),
        "statuses": " ".join(f"{code}:{n}" for code, n in sorted(statuses.items())),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "duration_s": duration,
        "client_cpu_s": cpu,
        "client_cpu_share": cpu / (warmup + duration),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("model", help="the model name the request names")
    parser.add_argument("prediction", help="the prediction output's name: prediction or predict")
    parser.add_argument("files", type=Path, help="a V2 workload's path, without .bodies")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--streams-per-channel", type=int, default=8)
    args = parser.parse_args(argv)
    summary = drive(
        args.target,
        args.files,
        args.model,
        ["key", args.prediction],
        args.streams,
        args.seconds,
        args.warmup,
        args.processes,
        args.streams_per_channel,
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
