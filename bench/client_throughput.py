"""Rows/s of keyed-score against one and two servers, and of /predict_file, in one run.

    .venv/bin/python bench/client_throughput.py [--rows 200000] [--out bench/client_throughput.md]

Two real servers (entry + runner each) on this machine's cores, a generated table, the
CLI run once against one server and once against both, the same table uploaded to
/predict_file; every output is checked to hold every key once, in input order. The
model's own in-process predict over the same rows is measured beside them as the limit.
Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def main() -> int:
    from servers import bench_home

    with bench_home("keyed-bench") as (_, work):
        return run(work)


def run(work: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "client_throughput.md"))
    args = parser.parse_args()

    import bentoml
    import httpx
    import joblib
    import numpy as np
    import pandas as pd
    from support import Server

    from keyed_serving.model.store import MODEL_FILE
    from keyed_serving.model.training import train_default

    tag = train_default().tag
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(np.round(rng.uniform(0.1, 7.9, (args.rows, 4)), 1), columns=FEATURES)
    frame.insert(0, "row_id", [f"r{i:08d}" for i in range(args.rows)])
    source = work / "table.csv"
    frame.to_csv(source, index=False)

    pipeline = joblib.load(bentoml.models.get(tag).path_of(MODEL_FILE))
    started = time.perf_counter()
    pipeline.predict(frame[FEATURES])
    pipeline.predict_proba(frame[FEATURES])
    in_process = args.rows / (time.perf_counter() - started)

    def check(path: Path) -> None:
        scored = pd.read_csv(path, dtype={"row_id": str}, usecols=["row_id"])
        assert scored["row_id"].tolist() == frame["row_id"].tolist(), "keys differ"

    def cli(urls: list[str], out: Path) -> float:
        command = [
            str(Path(sys.executable).parent / "keyed-score"),
            str(source),
            "--key",
            "row_id",
            "--out",
            str(out),
            "--concurrency",
            "8",
        ]
        for url in urls:
            command += ["--url", url]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=900)
        elapsed = time.perf_counter() - started
        check(out)
        return args.rows / elapsed

    servers = [Server(MODEL_TAG=tag), Server(MODEL_TAG=tag)]
    try:
        one = cli([servers[0].url], work / "one.csv")
        two = cli([s.url for s in servers], work / "two.csv")
        started = time.perf_counter()
        with source.open("rb") as upload:
            response = httpx.post(
                f"{servers[0].url}/predict_file",
                timeout=900,
                files={"file": ("table.csv", upload)},
                data={"key": "row_id"},
            )
        file_rate = args.rows / (time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
        (work / "file.csv").write_bytes(response.content)
        check(work / "file.csv")
    finally:
        for server in servers:
            server.stop()

    rows = [
        ("model alone, in-process predict + predict_proba (the limit)", in_process),
        ("keyed-score, one server", one),
        ("keyed-score, two servers (same 2 cores)", two),
        ("POST /predict_file, one server", file_rate),
    ]
    lines = [
        "# Client and file scoring throughput",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.rows:,} rows of the "
        f"default iris model, CSV in and out, {os.cpu_count()} cores "
        f"({platform.machine()}); client, servers and model share them. Every output was "
        "checked to hold every key once, in input order.",
        "",
        "| path | rows/s | vs one server |",
        "|---|---|---|",
        *[f"| {name} | {rate:,.0f} | {rate / one:.2f} |" for name, rate in rows],
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
