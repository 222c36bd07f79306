"""The report: the machine and versions, the results table, the ratios between servers
measured in one run, and the plot of the concurrency sweep.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import WORKLOADS, Result
from servers import MLSERVER_VENV


@dataclass
class Run:
    machine: dict[str, str] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    in_process: dict[int, float] = field(default_factory=dict)
    sweep: list[Result] = field(default_factory=list)
    w4: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
GRPC_PATH = "keyed, gRPC (MLServer's request)"
PEER = "MLServer 1.7.1"
PEER_GRPC = "MLServer 1.7.1, gRPC"


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
        "| peak RSS MB | load CPU % |",
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
        "load CPU % is the load generator's own CPU time over the run (100% = one core of two):",
        "wrk's, or for the gRPC rows the gRPC driver's (bench/grpc_load.py, Python processes).",
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
    over_grpc = [
        (load, *(find(run, name, load.name) for name in (GRPC_PATH, PEER_GRPC, V2_PATH, PEER)))
        for load in WORKLOADS
    ]
    over_grpc = [row for row in over_grpc if row[1] or row[2]]
    if over_grpc:
        lines += [
            "",
            "## The same V2 request over gRPC",
            "",
            "One serialised ModelInferRequest per body to both servers (key BYTES + one FP64",
            "input per feature in raw_input_contents, outputs key and the prediction), driven by",
            "bench/grpc_load.py; every answer checked by key.",
            "",
            "| workload | ours gRPC inst/s | MLServer gRPC inst/s | ours / MLServer "
            "| p99 ours / MLServer | ours gRPC / ours V2 HTTP | MLServer gRPC / its HTTP |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for load, mine, peer, http, peer_http in over_grpc:
            rate = [r and r.instances_per_s for r in (mine, peer, http, peer_http)]
            p99 = ratio(mine.summary["p99_ms"], peer.summary["p99_ms"]) if mine and peer else "n/a"
            lines.append(
                f"| {load.name} | {rate[0] or 0:,.0f} | {rate[1] or 0:,.0f} | "
                f"{ratio(rate[0], rate[1])} | {p99} | {ratio(rate[0], rate[2])} | "
                f"{ratio(rate[1], rate[3])} |"
            )
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
            f"## W4: a {w['rows']:,}-row table through keyed-score",
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
