"""The benchmark: real servers under wrk, every answer checked key by key, baselines measured
in the same run.

    make bench          # this project, its baselines, and MLServer if bench-peers set it up
    make bench-peers    # installs MLServer 1.7 in bench/.venv-mlserver, then runs make bench

Workloads (each a warm-up, then --seconds of load):
  W1  64 connections x 1 instance (row format)     W2  16 x 100 (row format)
  W3  1 x 10,000 (columnar; rows too, for reference)
  W4  a 1,000,000-row table through the keyed-score CLI (this project only)
Servers: this project as deployed (defaults) on /predict and on its Open Inference Protocol
path with the very V2 bodies MLServer gets, the same with batching off, an unkeyed variant
of the same endpoint (bench/unkeyed_service.py), MLServer 1.7 + mlserver-sklearn with
adaptive batching (bench/peers/), and the model in-process as the limit. A concurrency
sweep (1 to 256 connections x 1 instance) of this project and MLServer gives the plot.

Writes bench/results.md and bench/throughput.png. Wall-clock numbers are noisy on a shared
2-core machine: read the ratios, which are measured minutes apart in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import WORKLOADS, Result, Workload, in_process_rates, measure, score_table, write_workload
from servers import (
    BENCH,
    MLSERVER_MODEL_SETTINGS,
    MLSERVER_VENV,
    bench_setup,
    bentoml_server,
    mlserver,
)


@dataclass
class Run:
    machine: dict[str, str] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    in_process: dict[int, float] = field(default_factory=dict)
    sweep: list[Result] = field(default_factory=list)
    w4: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---- report -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import bentoml
    import sklearn

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    info = {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem:.0f} GiB",
        "python": platform.python_version(),
        "bentoml": bentoml.__version__,
        "scikit-learn": sklearn.__version__,
        "load generator": wrk_version.strip() or "wrk",
    }
    if (MLSERVER_VENV / "bin" / "mlserver").exists():
        out = subprocess.run(
            [
                str(MLSERVER_VENV / "bin" / "python"),
                "-c",
                "import mlserver; print(mlserver.__version__)",
            ],
            capture_output=True,
            text=True,
        )
        info["mlserver"] = out.stdout.strip()
    return info


V2_PATH = "keyed, V2 path (MLServer's body)"


def find(run: Run, server: str, workload: str) -> Result | None:
    return next((r for r in run.results if r.server == server and r.workload == workload), None)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report(run: Run, out: Path, plot: Path | None) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/harness.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Every answer was checked against the model's own predictions, key by key; an answer",
        "with a wrong or missing key counts as an error. Peak RSS is the whole server (all of",
        "its processes). Wall-clock numbers are noisy here; the ratios compare servers measured",
        "minutes apart in this one run.",
        "",
        "## Machine and versions",
        "",
        *(f"- {k}: {v}" for k, v in run.machine.items()),
        "",
        "## Throughput and latency",
        "",
        "| server | workload | inst/s | req/s | p50 ms | p99 ms | errors | checked "
        "| peak RSS MB | wrk CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run.results:
        s = r.summary
        lines.append(
            f"| {r.server} | {r.workload} ({r.connections} x {r.instances_per_request:,}) | "
            f"{r.instances_per_s:,.0f} | {r.requests_per_s:,.1f} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {r.errors} | {s['checked']:,} | {r.peak_rss_mb:,.0f} | "
            f"{100 * r.wrk_cpu_s / r.seconds:.0f} |"
        )
    ours = "keyed (this project)"
    lines += [
        "",
        "wrk CPU % is the load generator's own CPU time over the run (100% = one core of two).",
        "",
        "## Model in-process (the limit)",
        "",
        "| batch | rows/s |",
        "|---:|---:|",
        *(f"| {b:,} | {rate:,.0f} |" for b, rate in run.in_process.items()),
        "",
        "## Ratios",
        "",
        "| workload | vs MLServer (inst/s) | p99 ours / MLServer | vs batching off "
        "| keyed / unkeyed | vs in-process at the same batch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for load in WORKLOADS:
        mine = find(run, ours, load.name)
        if mine is None:
            continue
        peer = find(run, "MLServer 1.7.1", load.name)
        off = find(run, "keyed, batching off", load.name)
        unkeyed = find(run, "unkeyed variant", load.name)
        limit = run.in_process.get(load.instances)
        p99 = ratio(mine.summary["p99_ms"], peer.summary["p99_ms"]) if peer else "n/a"
        lines.append(
            f"| {load.name} | {ratio(mine.instances_per_s, peer and peer.instances_per_s)} | "
            f"{p99} | {ratio(mine.instances_per_s, off and off.instances_per_s)} | "
            f"{ratio(mine.instances_per_s, unkeyed and unkeyed.instances_per_s)} | "
            f"{ratio(mine.instances_per_s, limit)} |"
        )
    same_body = [
        (load, find(run, V2_PATH, load.name), find(run, "MLServer 1.7.1", load.name))
        for load in WORKLOADS
    ]
    same_body = [(load, v2, peer) for load, v2, peer in same_body if v2 and peer]
    if same_body:
        lines += [
            "",
            "## The same V2 body to both servers",
            "",
            "| workload | V2 path / MLServer (inst/s) | p99 ours / MLServer |",
            "|---|---:|---:|",
            *(
                f"| {load.name} | {ratio(v2.instances_per_s, peer.instances_per_s)} | "
                f"{ratio(v2.summary['p99_ms'], peer.summary['p99_ms'])} |"
                for load, v2, peer in same_body
            ),
        ]
    if run.sweep:
        lines += [
            "",
            "## Concurrency sweep (x 1 instance per request)",
            "",
            "| server | connections | inst/s | p99 ms | errors | non-200 answers |",
            "|---|---:|---:|---:|---:|---|",
            *(
                f"| {r.server} | {r.connections} | {r.instances_per_s:,.0f} | "
                f"{r.summary['p99_ms']:.1f} | {r.errors} | {r.statuses} |"
                for r in run.sweep
            ),
        ]
        if plot is not None:
            lines += ["", f"![throughput against concurrency]({plot.name})"]
    if run.w4:
        w = run.w4
        lines += [
            "",
            "## W4: a 1,000,000-row table through keyed-score",
            "",
            f"- {w['rows']:,} rows in {w['seconds']:.1f} s: **{w['rows_per_s']:,.0f} rows/s** "
            f"(model in-process, 10,000-row batches: {w['in_process_rows_per_s']:,.0f} rows/s, "
            f"ratio {w['rows_per_s'] / w['in_process_rows_per_s']:.2f})",
            f"- every key once: {w['every_key_once']}; predictions differing from the model's: "
            f"{w['mismatched']}; client peak RSS {w['client_peak_rss_mb']:,.0f} MB",
        ]
    lines += ["", "## Notes", "", *(f"- {n}" for n in run.notes)]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def draw(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for server in dict.fromkeys(r.server for r in run.sweep):
        points = [(r.connections, r.instances_per_s) for r in run.sweep if r.server == server]
        ax.plot(*zip(*points, strict=True), marker="o", label=server)
    ax.set_xscale("log", base=4)
    ax.set_xticks([1, 4, 16, 64, 256], ["1", "4", "16", "64", "256"])
    ax.set_xlabel("concurrent connections (1 instance per request)")
    ax.set_ylabel("instances/s (answers checked by key)")
    ax.set_title(f"Throughput against concurrency, {run.machine.get('cores', '?')} cores")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# ---- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--sweep-seconds", type=float, default=8.0)
    parser.add_argument("--table-rows", type=int, default=1_000_000, help="W4; 0 skips it")
    parser.add_argument("--servers", default="keyed,off,unkeyed,mlserver")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    args = parser.parse_args(argv)

    with bench_setup("keyed-bench") as setup:
        home, work, tag, model_path, pipeline = (
            setup.home, setup.work, setup.tag, setup.model_path, setup.pipeline
        )  # fmt: skip
        run = Run(machine=machine())
        print(f"model {tag}; data in {work}", flush=True)
        files = {
            load.name: write_workload(work, load, pipeline, seed=i)
            for i, load in enumerate(WORKLOADS)
        }
        run.in_process = in_process_rates(pipeline)
        print("  in-process rows/s:", {b: round(r) for b, r in run.in_process.items()}, flush=True)
        wanted = args.servers.split(",")
        has_peer = (MLSERVER_VENV / "bin" / "mlserver").exists()
        if "mlserver" in wanted and not has_peer:
            run.notes.append("MLServer not measured: run `make bench-peers` to install it.")
        env = {"MODEL_TAG": tag}
        servers: list[tuple[str, Any]] = []
        if "keyed" in wanted:
            servers.append(
                (
                    "keyed (this project)",
                    lambda: bentoml_server("keyed", "service:KeyedPrediction", home, work, **env),
                )
            )
        if "off" in wanted:
            servers.append(
                (
                    "keyed, batching off",
                    lambda: bentoml_server(
                        "keyed batching off",
                        "service:KeyedPrediction",
                        home,
                        work,
                        KEYED_BATCHING="false",
                        **env,
                    ),
                )
            )
        if "unkeyed" in wanted:
            servers.append(
                (
                    "unkeyed variant",
                    lambda: bentoml_server(
                        "unkeyed", "bench.unkeyed_service:UnkeyedPrediction", home, work, **env
                    ),
                )
            )
        if "mlserver" in wanted and has_peer:
            servers.append(("MLServer 1.7.1", lambda: mlserver(model_path, work)))
        for name, start in servers:
            print(f"{name}:", flush=True)
            with start() as server:
                server.name = name
                for load in WORKLOADS:
                    fmt = {"MLServer 1.7.1": "v2", "unkeyed variant": f"{load.shape}_unkeyed"}.get(
                        name, load.shape
                    )
                    if name == "MLServer 1.7.1" and load.shape == "rows" and load.instances > 1000:
                        continue  # V2 is columnar only: W3 is measured once
                    source = files[load.name]["v2" if fmt == "v2" else fmt]
                    run.results.append(measure(server, load, source, fmt, args, work))
                if name == "keyed (this project)":
                    # The Open Inference Protocol path, with the very bodies MLServer gets.
                    server.name, server.path = V2_PATH, f"/v2/models/{tag.split(':')[0]}/infer"
                    for load in WORKLOADS:
                        if load.shape == "rows" and load.instances > 1000:
                            continue  # V2 is columnar: W3 is measured once
                        run.results.append(
                            measure(server, load, files[load.name]["v2"], "v2", args, work)
                        )
                    server.name, server.path = name, "/predict"
                if not args.no_sweep and name in ("keyed (this project)", "MLServer 1.7.1"):
                    fmt = "v2" if name == "MLServer 1.7.1" else "rows"
                    for connections in (1, 4, 16, 64, 256):
                        load = Workload("sweep", connections, 1, 2000, "rows")
                        sweep_args = argparse.Namespace(warmup=3, seconds=args.sweep_seconds)
                        run.sweep.append(
                            measure(server, load, files["W1"][fmt], fmt, sweep_args, work)
                        )
                if name == "keyed (this project)" and args.table_rows:
                    run.w4 = score_table(server, work, pipeline, args.table_rows)
                    print(f"  W4: {run.w4}", flush=True)
                roles = ", ".join(
                    f"{role} {mb:,.0f} MB" for role, mb in sorted(server.rss.peak_by_role.items())
                )
                run.notes.append(f"{name}: peak RSS per process: {roles}.")
        run.notes.append(
            "Formats: W1, W2 and 'W3 rows' send rows ({instances: [{key, features}]}); W3 "
            "sends columns ({keys, columns}); MLServer gets the same rows as a V2 request "
            "(keys as a BYTES input, one FP64 input per feature) and answers keys, predict "
            "and predict_proba; the unkeyed variant gets the same bodies without keys."
        )
        run.notes.append(
            "MLServer model settings: "
            + json.dumps({k: v for k, v in MLSERVER_MODEL_SETTINGS.items() if k.startswith("max")})
            + "; both servers take predict_proba once and the forest's prediction from it."
        )
        plot = BENCH / "throughput.png" if run.sweep else None
        if plot is not None:
            draw(run, plot)
        print(report(run, args.out, plot))
        return 0


if __name__ == "__main__":
    sys.exit(main())
