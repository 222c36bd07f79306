"""The load: the workloads, their bodies and expected answers, wrk driving a server with
every answer checked by key, and the model in-process and the keyed-score CLI beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import BENCH, ROOT, Server

LUA = BENCH / "wrk" / "keyed.lua"
RANGES = {  # iris-like values, so that every class is predicted
    "sepal_length_cm": (4.3, 7.9),
    "sepal_width_cm": (2.0, 4.4),
    "petal_length_cm": (1.0, 6.9),
    "petal_width_cm": (0.1, 2.5),
}


@dataclass
class Workload:
    name: str
    connections: int
    instances: int
    bodies: int
    shape: str  # "rows" or "columns"


WORKLOADS = [
    Workload("W1", 64, 1, 2000, "rows"),
    Workload("W2", 16, 100, 300, "rows"),
    Workload("W3", 1, 10_000, 6, "columns"),
    Workload("W3 rows", 1, 10_000, 6, "rows"),
]


@dataclass
class Result:
    server: str
    workload: str
    connections: int
    instances_per_request: int
    summary: dict[str, Any]
    peak_rss_mb: float
    wrk_cpu_s: float
    rss_by_process: dict[str, float] = field(default_factory=dict)  # peak MB, by role

    @property
    def seconds(self) -> float:
        return float(self.summary["duration_s"])

    @property
    def requests_per_s(self) -> float:
        return self.summary["checked"] / self.seconds

    @property
    def instances_per_s(self) -> float:
        return self.requests_per_s * self.instances_per_request

    @property
    def goodput(self) -> float:
        """Checked 200s per second (every answer's keys and predictions right)."""
        return self.requests_per_s

    @property
    def non_2xx(self) -> int:
        return int(self.summary["failed"])

    @property
    def connection_errors(self) -> int:
        """Connections that failed (connect, read, write) and requests past wrk's 30 s
        timeout: answers that never came, counted apart from the non-2xx ones."""
        s = self.summary
        return int(s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["timeouts"])

    @property
    def p99_200(self) -> tuple[float, bool]:
        """The p99 of the checked 200s, and whether it is exactly that. The wrk script times
        the 200s itself where the server echoes X-Request-ID; where it does not, wrk's own
        p99 over every answer stands in, which is the 200s' p99 only if every answer was a
        200 (the gRPC driver times only its OK answers)."""
        s = self.summary
        if s.get("latency_200_count"):
            return float(s["p99_200_ms"]), True
        exact = "latency_200_count" not in s or s["failed"] == 0
        return float(s["p99_ms"]), exact

    @property
    def statuses(self) -> str:
        """Non-200 answers by status, e.g. "429 x6765"."""
        pairs = sorted(item.split(":") for item in self.summary.get("statuses", "").split())
        return ", ".join(f"{status} x{n}" for status, n in pairs) or "-"

    @property
    def errors(self) -> int:
        s = self.summary
        return int(
            s["failed"]
            + s["mismatched"]
            + s["connect_errors"]
            + s["read_errors"]
            + s["write_errors"]
            + s["timeouts"]
        )


# ---- data ---------------------------------------------------------------------------


def make_features(rng: random.Random, n: int) -> dict[str, list[float]]:
    return {f: [round(rng.uniform(lo, hi), 1) for _ in range(n)] for f, (lo, hi) in RANGES.items()}


def write_workload(work: Path, load: Workload, pipeline: Any, seed: int) -> dict[str, Path]:
    """Bodies and expected signatures for each wire format; returns paths by format."""
    import pandas as pd

    rng = random.Random(seed)
    formats = ("rows", "columns", "rows_unkeyed", "columns_unkeyed", "v2", "v2bin")
    files: dict[str, Any] = {
        f: (work / f"{load.name}.{f}.bodies").open("wb" if f == "v2bin" else "w") for f in formats
    }
    expects = {f: (work / f"{load.name}.{f}.expected").open("w") for f in formats}
    compact = {"separators": (",", ":")}
    for b in range(load.bodies):
        n = load.instances
        keys = [f"b{b}-{row}" for row in range(n)]
        features = make_features(rng, n)
        names = list(features)
        predictions = pipeline.predict(pd.DataFrame(features)).tolist()
        instances = [
            {"key": k, "features": {f: features[f][i] for f in names}} for i, k in enumerate(keys)
        ]
        files["rows"].write(json.dumps({"instances": instances}, **compact) + "\n")
        files["columns"].write(json.dumps({"keys": keys, "columns": features}, **compact) + "\n")
        unkeyed = [{"features": i["features"]} for i in instances]
        files["rows_unkeyed"].write(json.dumps({"instances": unkeyed}, **compact) + "\n")
        files["columns_unkeyed"].write(json.dumps({"columns": features}, **compact) + "\n")
        v2 = {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": "key", "shape": [n], "datatype": "BYTES", "data": keys},
                *(
                    {"name": f, "shape": [n], "datatype": "FP64", "data": features[f]}
                    for f in names
                ),
            ],
        }
        files["v2"].write(json.dumps(v2, **compact) + "\n")
        header_length, body = v2_binary_body(keys, features)
        files["v2bin"].write(f"{header_length} {len(body)}\n".encode() + body)
        keys_json = json.dumps(keys, **compact)
        predictions_json = json.dumps(predictions, **compact)
        pairs = ";".join(
            f"{json.dumps(k)}={json.dumps(p)}" for k, p in zip(keys, predictions, strict=True)
        )
        expects["rows"].write(pairs + "\n")
        expects["columns"].write(f"{keys_json}|{predictions_json}\n")
        expects["v2"].write(f"{keys_json}|{predictions_json}\n")
        expects["v2bin"].write(f"{keys_json}|{predictions_json}\n")
        expects["rows_unkeyed"].write(";".join(json.dumps(p) for p in predictions) + "\n")
        expects["columns_unkeyed"].write(predictions_json + "\n")
    for handle in (*files.values(), *expects.values()):
        handle.close()
    return {f: work / f"{load.name}.{f}" for f in formats}


def v2_binary_body(keys: list[str], features: dict[str, list[float]]) -> tuple[int, bytes]:
    """The V2 request tritonclient's HTTP client sends for the same inputs, by its own code:
    every input binary (the binary tensor data extension) and, as no output is named,
    ``binary_data_output: true``, so every output comes back binary too. Returns the JSON
    header's length (Inference-Header-Content-Length) and the body."""
    import numpy as np
    from tritonclient.http import InferInput
    from tritonclient.http._utils import _get_inference_request

    inputs = [InferInput("key", [len(keys)], "BYTES")]
    inputs[0].set_data_from_numpy(np.array(keys, dtype=np.object_))
    for name, values in features.items():
        tensor = InferInput(name, [len(values)], "FP64")
        tensor.set_data_from_numpy(np.array(values, dtype=np.float64))
        inputs.append(tensor)
    body, header_length = _get_inference_request(
        inputs=inputs,
        request_id="",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters={"content_type": "pd"},
    )
    return int(header_length), bytes(body)


# ---- load ---------------------------------------------------------------------------


def wrk(
    server: Server, files: Path, fmt: str, connections: int, seconds: float, work: Path
) -> tuple[dict[str, Any], float]:
    summary = work / "wrk-summary.json"
    summary.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(LUA),
            server.url + server.path,
            "--",
            f"{files}.bodies",
            f"{files}.expected",
            fmt,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "WRK_SUMMARY": str(summary)},
        timeout=seconds + 120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0 or not summary.exists():
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(summary.read_text()), cpu


def measure(
    server: Server,
    load: Workload,
    files: Path,
    fmt: str,
    args: Any,
    work: Path,
    after_warmup: Callable[[], Any] | None = None,
) -> Result:
    wrk(server, files, fmt, load.connections, args.warmup, work)
    if after_warmup is not None:
        after_warmup()
    server.rss.reset()
    summary, cpu = wrk(server, files, fmt, load.connections, args.seconds, work)
    result = Result(
        server.name,
        load.name,
        load.connections,
        load.instances,
        summary,
        server.rss.peak_total,
        cpu,
        server.rss.peak_by_role,
    )
    p99, exact = result.p99_200
    print(
        f"  {server.name:34} {load.name:8} {fmt:8} {result.instances_per_s:>10,.0f} inst/s "
        f"p99 of 200s {p99:>7.1f} ms{'' if exact else ' (all answers)'}  "
        f"non-2xx {result.statuses}  errors {result.errors}  checked {summary['checked']}",
        flush=True,
    )
    return result


# ---- baselines ----------------------------------------------------------------------


def in_process_rates(pipeline: Any, seconds: float = 2.0) -> dict[int, float]:
    """Rows/s of the pipeline's own predict on a DataFrame, per batch size: the limit."""
    import pandas as pd

    rng = random.Random(5)
    rates = {}
    for batch in (1, 100, 1000, 10_000):
        frame = pd.DataFrame(make_features(rng, batch))
        pipeline.predict(frame)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            pipeline.predict(frame)
            calls += 1
        rates[batch] = calls * batch / (time.perf_counter() - started)
    return rates


def score_table(server: Server, work: Path, pipeline: Any, rows: int) -> dict[str, Any]:
    """W4: a table through the keyed-score CLI; every key once, predictions the model's."""
    import pandas as pd
    import psutil

    rng = random.Random(9)
    table = pd.DataFrame({"row_id": [f"r{i:07d}" for i in range(rows)], **make_features(rng, rows)})
    source, target = work / "table.parquet", work / "scored.parquet"
    table.to_parquet(source, index=False)
    # `python -m` with cwd=ROOT: the code of this checkout (a worktree has no .venv of its
    # own, and the venv's console script imports the main checkout's code).
    process = psutil.Popen(
        [
            sys.executable,
            "-m",
            "keyed_serving.client.cli",
            str(source),
            "--key",
            "row_id",
            "--url",
            server.url,
            "--out",
            str(target),
            "--chunk-size",
            "10000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    peak, started = 0.0, time.perf_counter()
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, process.memory_info().rss / 2**20)
        time.sleep(0.2)  # sampling the client's memory while it runs
    elapsed = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"keyed-score failed: {output[-2000:]}")
    scored = pd.read_parquet(target)
    expected = {}
    for start in range(0, rows, 100_000):
        part = table.iloc[start : start + 100_000]
        predicted = pipeline.predict(part[list(RANGES)]).tolist()
        expected.update(zip(part["row_id"], predicted, strict=True))
    got = dict(zip(scored["row_id"], scored["prediction"], strict=True))
    started_model = time.perf_counter()
    for start in range(0, rows, 10_000):
        pipeline.predict(table.iloc[start : start + 10_000][list(RANGES)])
    model_s = time.perf_counter() - started_model
    return {
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "every_key_once": len(scored) == rows and scored["row_id"].is_unique,
        "mismatched": sum(got.get(k) != v for k, v in expected.items()),
        "client_peak_rss_mb": peak,
        "in_process_rows_per_s": rows / model_s,
    }


# ---- gRPC -----------------------------------------------------------------------------

# Client processes of the gRPC driver (bench/grpc_load.py): two for the concurrent
# workloads (one asyncio loop is the bottleneck near 64 streams), one for a single stream.
GRPC_PROCESSES = 2


def measure_grpc(
    server: Server, load: Workload, files: Path, model: str, prediction: str, args: Any
) -> Result:
    """The workload's V2 request over gRPC (bench/grpc_load.py), answers checked by key;
    the result's ``wrk_cpu_s`` is the gRPC driver's CPU time over the measured part."""
    from grpc_load import drive

    if server.grpc_target is None:
        raise ValueError(f"{server.name} serves no gRPC")
    server.rss.reset()
    summary = drive(
        server.grpc_target,
        files,
        model,
        ["key", prediction],
        load.connections,
        args.seconds,
        warmup=args.warmup,
        processes=min(GRPC_PROCESSES, load.connections),
    )
    result = Result(
        server.name,
        load.name,
        load.connections,
        load.instances,
        summary,
        server.rss.peak_total,
        summary["client_cpu_share"] * summary["duration_s"],
        server.rss.peak_by_role,
    )
    print(
        f"  {server.name:34} {load.name:8} {result.instances_per_s:>10,.0f} inst/s "
        f"p99 {summary['p99_ms']:>7.1f} ms  errors {result.errors}  checked {summary['checked']}"
        f"  driver CPU {100 * summary['client_cpu_share']:.0f}%",
        flush=True,
    )
    return result
