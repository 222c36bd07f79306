"""The sweep behind the defaults: workers per service, entry coalescing and runner batching.

    .venv/bin/python bench/sweep.py [--seconds 6] [--out bench/sweep.md]

Each configuration is this project's real server (`bentoml serve`) under W1 (64 x 1), W1
at 1,024 connections (past the entry's concurrency limit: most of them wait for a turn),
W2 (16 x 100, rows) and W3 (1 x 10,000, columns), driven by wrk with every answer checked
by key (bench/load.py does the driving). Configurations differ only in KEYED_* variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import caught_up
from load import WORKLOADS, measure, write_workload
from report import machine
from servers import BENCH, bench_setup, bentoml_server

CONFIGS = [
    ("defaults: 1 entry, 1 runner, 2 calls in flight, linger 5 ms, 256 blocks", {}),
    ("64 blocks per micro-batch (the default before issue 18)", {"KEYED_MAX_BATCH_SIZE": "64"}),
    ("128 blocks per micro-batch", {"KEYED_MAX_BATCH_SIZE": "128"}),
    ("512 blocks per micro-batch", {"KEYED_MAX_BATCH_SIZE": "512"}),
    ("no linger", {"KEYED_COALESCE_LINGER_MS": "0"}),
    ("linger 10 ms", {"KEYED_COALESCE_LINGER_MS": "10"}),
    ("1 call in flight", {"KEYED_RUNNER_CALLS": "1"}),
    ("4 calls in flight", {"KEYED_RUNNER_CALLS": "4"}),
    ("2 runner workers, 4 calls", {"KEYED_RUNNER_WORKERS": "2", "KEYED_RUNNER_CALLS": "4"}),
    ("2 entry workers", {"KEYED_ENTRY_WORKERS": "2"}),
    ("max_latency_ms 300", {"KEYED_MAX_LATENCY_MS": "300"}),
    ("blocks of 10,000 rows", {"KEYED_CHUNK_ROWS": "10000"}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=BENCH / "sweep.md")
    args = parser.parse_args()
    with bench_setup("keyed-sweep") as setup:
        home, work, tag, pipeline = setup.home, setup.work, setup.tag, setup.pipeline
        loads = [w for w in WORKLOADS if w.name in ("W1", "W2", "W3")]
        files = {w.name: write_workload(work, w, pipeline, seed=i) for i, w in enumerate(loads)}
        # The same bodies as W1, from 1,024 connections.
        loads.insert(1, dataclasses.replace(loads[0], name="W1 1,024", connections=1024))
        files["W1 1,024"] = files["W1"]
        rows = []
        for label, env in CONFIGS:
            print(label, flush=True)
            with bentoml_server(
                "sweep", "service:KeyedPrediction", home, work, MODEL_TAG=tag, **env
            ) as server:
                for load in loads:
                    body = files[load.name][load.shape]
                    result = measure(
                        server,
                        load,
                        body,
                        load.shape,
                        args,
                        work,
                        # As the harness's sweep: nothing owed to the warm-up's connections
                        # (at 1,024, hundreds of them still queued) weighs on the measure.
                        after_warmup=lambda server=server, body=body: caught_up(server, body),
                    )
                    rows.append((label, result))
        info = machine()
        lines = [
            "# Sweep: workers, coalescing and batching bounds",
            "",
            "Written by `bench/sweep.py`; each answer checked by key. "
            f"{info['cores']} cores, {info['cpu']}, bentoml {info['bentoml']}.",
            f"{args.seconds:g} s per load after {args.warmup:g} s of warm-up; expect about 10% "
            "noise between runs. W1 at 1,024 connections: the W1 body from 1,024 connections, "
            "of which 128 are worked on at once (KEYED_MAX_CONCURRENCY) and the others wait "
            "for a turn.",
            "",
            "| configuration | W1 inst/s | W1 p99 ms | W1 at 1,024 connections inst/s "
            "| W1 at 1,024 p99 ms | W2 inst/s | W2 p99 ms | W3 rows/s | W3 p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, _ in CONFIGS:
            by_load = {r.workload: r for name, r in rows if name == label}
            cells = []
            for name in ("W1", "W1 1,024", "W2", "W3"):
                r = by_load[name]
                cells += [f"{r.instances_per_s:,.0f}", f"{r.summary['p99_ms']:.0f}"]
            errors = sum(r.errors for r in by_load.values())
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {errors} |")
        args.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
