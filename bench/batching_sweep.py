"""Sweep the runner's batching bounds under three loads against a real `bentoml serve`.

    .venv/bin/python bench/batching_sweep.py [--seconds 8] [--out bench/batching_sweep.md]

For each configuration it starts the service (entry + runner), drives it from a separate
process with asyncio + aiohttp, checks every answer's keys and predictions while it
measures, and reads rows and requests per micro-batch from the service's /metrics. The
model's own in-process predict is measured in the same run as the limit to compare to.
Loads: W1 64 clients x 1 instance, W2 16 x 100, W3 1 x 10,000.
Loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
CONFIGS = [
    # (label, max_batch_size, max_latency_ms, chunk_rows)
    ("BentoML defaults (100 / 60 s), chunk 100", 100, 60000, 100),
    ("1000 / 2000 ms, chunk 500 (chosen)", 1000, 2000, 500),
    ("1000 / 300 ms, chunk 500", 1000, 300, 500),
    ("4000 / 2000 ms, chunk 2000", 4000, 2000, 2000),
    ("1000 / 2000 ms, chunk 100", 1000, 2000, 100),
]
LOADS = [("W1 64x1", 64, 1), ("W2 16x100", 16, 100), ("W3 1x10000", 1, 10_000)]


def flowers(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"key": i, "features": {f: round(rng.uniform(0.1, 8), 2) for f in FEATURES}}
        for i in range(n)
    ]


async def drive(url: str, clients: int, size: int, seconds: float, expected: dict) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    wrong = 0
    instances_done = 0
    bodies = [json.dumps({"instances": flowers(size, seed)}) for seed in range(8)]
    truths = [expected[(size, seed)] for seed in range(8)]
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(number: int) -> None:
            nonlocal errors, wrong, instances_done
            turn = number
            while time.monotonic() < stop_at:
                body, truth = bodies[turn % 8], truths[turn % 8]
                turn += 1
                started = time.perf_counter()
                async with session.post(
                    url + "/predict", data=body, headers={"content-type": "application/json"}
                ) as resp:
                    payload = await resp.read()
                latencies.append(time.perf_counter() - started)
                if resp.status != 200:
                    errors += 1
                    continue
                got = json.loads(payload)["predictions"]
                if [(p["key"], p["prediction"]) for p in got] != truth:
                    wrong += 1
                instances_done += size

        begun = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.monotonic() - begun
    latencies.sort()
    return {
        "instances_per_s": instances_done / elapsed,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "errors": errors,
        "mispaired": wrong,
    }


def load_process(url: str, clients: int, size: int, seconds: float, expected: dict, out) -> None:
    out.put(asyncio.run(drive(url, clients, size, seconds, expected)))


def run_load(url: str, clients: int, size: int, seconds: float, expected: dict) -> dict:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=load_process, args=(url, clients, size, seconds, expected, queue)
    )
    process.start()
    result = queue.get(timeout=seconds + 120)
    process.join(timeout=30)
    return result


def micro_batch_means(url: str) -> tuple[float, float, float]:
    import httpx

    samples = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("keyed_micro_batch_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    batches = samples.get("keyed_micro_batch_rows_count", 0.0)
    return (
        batches,
        samples.get("keyed_micro_batch_rows_sum", 0.0),
        samples.get("keyed_micro_batch_chunks_sum", 0.0),
    )


def in_process_rows_per_s(tag: str) -> dict[int, float]:
    import bentoml
    import joblib
    import pandas as pd

    from keyed_serving.model import MODEL_FILE

    pipeline = joblib.load(bentoml.models.get(tag).path_of(MODEL_FILE))
    rates = {}
    for size in (1, 100, 1000, 10_000):
        frame = pd.DataFrame([i["features"] for i in flowers(size, 0)], columns=FEATURES)
        pipeline.predict_proba(frame)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2:
            pipeline.predict(frame)
            pipeline.predict_proba(frame)
            runs += 1
        rates[size] = runs * size / (time.perf_counter() - started)
    return rates


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keyed-bench-home-") as home:
        os.environ["BENTOML_HOME"] = home  # a store of its own, removed afterwards
        return run()


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "batching_sweep.md"))
    args = parser.parse_args()

    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    from support import served  # the tests' server helper: free port, stops the workers

    from keyed_serving.training import train_default

    tag = train_default().tag
    import bentoml
    import joblib
    import pandas as pd

    from keyed_serving.model import MODEL_FILE

    pipeline = joblib.load(bentoml.models.get(tag).path_of(MODEL_FILE))
    expected = {}
    for _, _, size in LOADS:
        for seed in range(8):
            rows = flowers(size, seed)
            frame = pd.DataFrame([r["features"] for r in rows], columns=FEATURES)
            expected[(size, seed)] = list(
                zip([r["key"] for r in rows], pipeline.predict(frame).tolist(), strict=True)
            )

    limit = in_process_rows_per_s(tag)
    lines = [
        "# Batching sweep",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, bentoml "
        f"{bentoml.__version__}; {args.seconds:g} s per load after a 2 s warm-up; load from a "
        "separate process (asyncio + aiohttp) on the same 2 cores.",
        "",
        "Model alone, in-process predict + predict_proba (rows/s): "
        + ", ".join(f"batch {k:,}: {v:,.0f}" for k, v in limit.items()),
        "",
        "| config (max_batch_size / max_latency_ms, chunk_rows) | load | instances/s | "
        "vs model alone at that batch | p50 ms | p99 ms | errors | mispaired | "
        "rows per micro-batch | requests per micro-batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, batch, latency, chunk in CONFIGS:
        env = {
            "MODEL_TAG": tag,
            "KEYED_MAX_BATCH_SIZE": str(batch),
            "KEYED_MAX_LATENCY_MS": str(latency),
            "KEYED_CHUNK_ROWS": str(chunk),
        }
        with served(**env) as url:
            for load, clients, size in LOADS:
                run_load(url, clients, size, 2.0, expected)  # warm-up
                before = micro_batch_means(url)
                result = run_load(url, clients, size, args.seconds, expected)
                after = micro_batch_means(url)
                batches = after[0] - before[0]
                rows = (after[1] - before[1]) / batches if batches else float("nan")
                chunks = (after[2] - before[2]) / batches if batches else float("nan")
                reference = limit[min(limit, key=lambda k: abs(k - max(size, clients * size)))]
                line = (
                    f"| {label} | {load} | {result['instances_per_s']:,.0f} | "
                    f"{result['instances_per_s'] / reference:.2f} | {result['p50_ms']:.0f} | "
                    f"{result['p99_ms']:.0f} | {result['errors']} | {result['mispaired']} | "
                    f"{rows:.1f} | {chunks:.1f} |"
                )
                print(line, flush=True)
                lines.append(line)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
