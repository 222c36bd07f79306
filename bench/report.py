"""The report: the machine and versions, the results table, the ratios between servers
measured in one run, and the plot of the concurrency sweep.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import WORKLOADS, Result
from servers import BENCH, MLSERVER_VENV


@dataclass
class Run:
    machine: dict[str, str] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    in_process: dict[int, float] = field(default_factory=dict)
    sweep: list[Result] = field(default_factory=list)
    w4: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)  # the MLServer settings measured, by name
    deadline_s: float = 30.0  # KEYED_REQUEST_DEADLINE_S of the servers under test


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
        "open files (soft limit, wrk and the servers)": str(
            resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        ),
    }
    with contextlib.suppress(OSError):
        somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
        info["net.core.somaxconn (caps every listen backlog)"] = somaxconn
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


OURS = "keyed (this project)"
BATCHING_OFF = "keyed, batching off"
UNKEYED = "unkeyed variant"
V2_PATH = "keyed, V2 JSON (MLServer's body)"
V2_BINARY = "keyed, V2 binary (tritonclient's body)"
GRPC_PATH = "keyed, gRPC (MLServer's request)"
SWEEP_TARGETS = (64, 256, 1024)  # issue 18: goodput at 256 and 1,024 vs 64


def peer_binary(peer: str) -> str:
    return f"{peer}, V2 binary"


def peer_grpc(peer: str) -> str:
    return f"{peer}, gRPC"


def find(run: Run, server: str, workload: str) -> Result | None:
    return next((r for r in run.results if r.server == server and r.workload == workload), None)


def find_sweep(run: Run, server: str, connections: int) -> Result | None:
    return next((r for r in run.sweep if r.server == server and r.connections == connections), None)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def holds(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**holds**" if ok else "**does not hold**")


def p99_text(result: Result) -> str:
    p99, exact = result.p99_200
    return f"{p99:,.1f}" if exact else f"{p99:,.1f} †"


def processes_text(result: Result) -> str:
    return ", ".join(f"{role} {mb:,.0f}" for role, mb in sorted(result.rss_by_process.items()))


def goodput_text(result: Result) -> str:
    """Goodput, marked ‡ where the run was too short for it: answers still in flight when
    wrk stops are not counted, which matters once the tail nears the run's length."""
    short = result.summary["checked"] == 0 or result.summary["p99_ms"] > 250 * result.seconds
    return f"{result.goodput:,.0f}" + (" ‡" if short else "")


def targets(run: Run) -> list[str]:
    """Issue 18's targets that this run can check, each said to hold or not."""
    rows: list[tuple[str, str, bool | None]] = []
    base = find_sweep(run, OURS, 64)
    for connections in SWEEP_TARGETS[1:]:
        point = find_sweep(run, OURS, connections)
        if base and point:
            share = point.goodput / base.goodput if base.goodput else 0.0
            rows.append(
                (
                    f"goodput at {connections:,} connections >= 90% of the 64 figure",
                    f"{point.goodput:,.0f} vs {base.goodput:,.0f} 200s/s: **{share:.0%}**",
                    share >= 0.9,
                )
            )
    for connections in SWEEP_TARGETS:
        point = find_sweep(run, OURS, connections)
        if point:
            p99, exact = point.p99_200
            rows.append(
                (
                    f"p99 of the 200s at {connections:,} connections within the "
                    f"{run.deadline_s:g} s deadline",
                    f"{p99:,.0f} ms" + ("" if exact else " (wrk's p99 of every answer)"),
                    p99 <= run.deadline_s * 1000 if exact else None,
                )
            )
    for peer in run.peers:
        mine, theirs = find_sweep(run, OURS, 256), find_sweep(run, peer, 256)
        if mine and theirs:
            share = mine.goodput / theirs.goodput if theirs.goodput else float("inf")
            rows.append(
                (
                    f"goodput at 256 connections >= 1.5x {peer}",
                    f"{mine.goodput:,.0f} vs {theirs.goodput:,.0f} 200s/s: **{share:.2f}x**",
                    share >= 1.5,
                )
            )
    for peer in run.peers:
        for load in WORKLOADS:
            mine, theirs = find(run, OURS, load.name), find(run, peer, load.name)
            if mine and theirs and load.name != "W3 rows":
                share = mine.instances_per_s / theirs.instances_per_s
                rows.append(
                    (
                        f"{load.name} >= 1.5x {peer}",
                        f"{mine.instances_per_s:,.0f} vs {theirs.instances_per_s:,.0f} inst/s: "
                        f"**{share:.2f}x**",
                        share >= 1.5,
                    )
                )
    w3, limit = find(run, OURS, "W3"), run.in_process.get(10_000)
    if w3 and limit:
        share = w3.instances_per_s / limit
        rows.append(
            (
                "W3 >= 0.7 of in-process predict (batch 10,000)",
                f"{w3.instances_per_s:,.0f} vs {limit:,.0f} rows/s: **{share:.2f}**",
                share >= 0.7,
            )
        )
    for load in WORKLOADS[:3]:
        keyed, unkeyed = find(run, OURS, load.name), find(run, UNKEYED, load.name)
        if keyed and unkeyed:
            share = keyed.instances_per_s / unkeyed.instances_per_s
            rows.append(
                (
                    f"keys within 5% at {load.name} (keyed / unkeyed >= 0.95)",
                    f"**{share:.2f}**",
                    share >= 0.95,
                )
            )
    for load_name, share in keys_ab_ratios(BENCH / "keys_ab.md").items():
        rows.append(
            (
                f"keys within 5% at {load_name}, in turn (bench/keys_ab.md: keyed / unkeyed "
                ">= 0.95)",
                f"**{share:.2f}**",
                share >= 0.95,
            )
        )
    for peer in run.peers:
        pairs = [(find(run, OURS, w.name), find(run, peer, w.name)) for w in WORKLOADS[:3]]
        pairs = [(a, b) for a, b in pairs if a and b]
        if pairs:
            text = "; ".join(
                f"{a.workload} {a.peak_rss_mb:,.0f} vs {b.peak_rss_mb:,.0f} MB" for a, b in pairs
            )
            rows.append(
                (
                    f"peak RSS of the whole server <= {peer}'s, at every workload",
                    text,
                    all(a.peak_rss_mb <= b.peak_rss_mb for a, b in pairs),
                )
            )
    if not rows:
        return []
    return [
        "",
        "## Issue 18's targets",
        "",
        "Ours is `/predict` (rows; W3 columns) against MLServer's V2 JSON path; the sweep sends",
        "one instance per request, the same body every time, and wrk retries at once after a",
        "refusal.",
        "",
        "| target | measured | holds? |",
        "|---|---|---|",
        *(f"| {target} | {measured} | {holds(ok)} |" for target, measured, ok in rows),
    ]


def report(run: Run, out: Path, plot: Path | None) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/harness.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Every answer was checked against the model's own predictions, key by key; an answer",
        "with a wrong or missing key counts as an error. Wall-clock numbers are noisy here; the",
        "ratios compare servers measured minutes apart in this one run.",
        "",
        "## Machine and versions",
        "",
        *(f"- {k}: {v}" for k, v in run.machine.items()),
        *targets(run),
        "",
        "## Throughput and latency",
        "",
        "inst/s and req/s count checked 200s only. p99 is that of the checked 200s, timed by",
        "the wrk script where the server echoes X-Request-ID (ours); † marks wrk's own p99 over",
        "every answer (MLServer echoes no id), which is the 200s' p99 where non-2xx is 0.",
        "Other errors: wrong or missing keys, broken connections and wrk's 30 s timeouts.",
        "Peak RSS is the whole server, all of its processes (per process below).",
        "",
        "| server | workload | inst/s | req/s | p50 ms | p99 ms | non-2xx | other errors "
        "| checked | peak RSS MB | load CPU % |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in run.results:
        s = r.summary
        lines.append(
            f"| {r.server} | {r.workload} ({r.connections} x {r.instances_per_request:,}) | "
            f"{r.instances_per_s:,.0f} | {r.requests_per_s:,.1f} | {s['p50_ms']:.1f} | "
            f"{p99_text(r)} | {r.statuses} | {r.errors - r.non_2xx} | {s['checked']:,} | "
            f"{r.peak_rss_mb:,.0f} | {100 * r.wrk_cpu_s / r.seconds:.0f} |"
        )
    lines += [
        "",
        "load CPU % is the load generator's own CPU time over the run (100% = one core of two):",
        "wrk's, or for the gRPC rows the gRPC driver's (bench/grpc_load.py, Python processes).",
        "",
        "## Peak RSS per process",
        "",
        "Each process's peak over the measured part of each workload (MB), and the whole",
        "server's (the peak of the sum, sampled every 0.25 s).",
        "",
        "| server | workload | whole server MB | per process MB |",
        "|---|---|---:|---|",
        *(
            f"| {r.server} | {r.workload} | {r.peak_rss_mb:,.0f} | {processes_text(r)} |"
            for r in run.results
        ),
        "",
        "## Model in-process (the limit)",
        "",
        "| batch | rows/s |",
        "|---:|---:|",
        *(f"| {b:,} | {rate:,.0f} |" for b, rate in run.in_process.items()),
    ]
    peers = run.peers
    lines += [
        "",
        "## Ratios",
        "",
        "Ours on `/predict` (rows; W3 columns) against each MLServer setting's V2 JSON path.",
        "",
        "| workload | "
        + "".join(f"ours / {p} (inst/s) | p99 ours / {p} | " for p in peers)
        + "ours / batching off | ours / in-process at the same batch |",
        "|---|" + "---:|---:|" * len(peers) + "---:|---:|",
    ]
    for load in WORKLOADS:
        mine = find(run, OURS, load.name)
        if mine is None:
            continue
        cells = []
        for peer in peers:
            theirs = find(run, peer, load.name)
            cells.append(ratio(mine.instances_per_s, theirs and theirs.instances_per_s))
            cells.append(ratio(mine.p99_200[0], theirs and theirs.p99_200[0]))
        off = find(run, BATCHING_OFF, load.name)
        limit = run.in_process.get(load.instances)
        lines.append(
            f"| {load.name} | "
            + "".join(f"{c} | " for c in cells)
            + f"{ratio(mine.instances_per_s, off and off.instances_per_s)} | "
            f"{ratio(mine.instances_per_s, limit)} |"
        )
    keyed_rows = [
        (load, find(run, OURS, load.name), find(run, UNKEYED, load.name)) for load in WORKLOADS
    ]
    keyed_rows = [(load, k, u) for load, k, u in keyed_rows if k and u and load.name != "W3 rows"]
    if keyed_rows:
        lines += [
            "",
            "## Keys within 5% (keyed / unkeyed, the same endpoint without keys)",
            "",
            "The unkeyed variant (bench/unkeyed_service.py) measured in this run, minutes from",
            "ours; bench/keys_ab.py loads the two in turn, several rounds, for a finer A/B.",
            "",
            "| workload | keyed inst/s | unkeyed inst/s | keyed / unkeyed | within 5%? |",
            "|---|---:|---:|---:|---|",
            *(
                f"| {load.name} | {k.instances_per_s:,.0f} | {u.instances_per_s:,.0f} | "
                f"{k.instances_per_s / u.instances_per_s:.2f} | "
                f"{holds(k.instances_per_s / u.instances_per_s >= 0.95)} |"
                for load, k, u in keyed_rows
            ),
        ]
    v2_rows = []
    for load in WORKLOADS[:3]:
        json_ours, binary_ours = find(run, V2_PATH, load.name), find(run, V2_BINARY, load.name)
        for peer in peers:
            json_peer, binary_peer = (
                find(run, peer, load.name),
                find(run, peer_binary(peer), load.name),
            )
            if not (json_ours or binary_ours) or not json_peer:
                continue
            binary_vs = (
                ratio(binary_ours and binary_ours.instances_per_s, binary_peer.instances_per_s)
                if binary_peer
                else ratio(binary_ours and binary_ours.instances_per_s, json_peer.instances_per_s)
                + " (vs its JSON)"
            )
            v2_rows.append(
                f"| {load.name} | {peer} | "
                f"{json_ours.instances_per_s if json_ours else 0:,.0f} | "
                f"{binary_ours.instances_per_s if binary_ours else 0:,.0f} | "
                f"{json_peer.instances_per_s:,.0f} | "
                f"{f'{binary_peer.instances_per_s:,.0f}' if binary_peer else 'refused'} | "
                f"{ratio(json_ours and json_ours.instances_per_s, json_peer.instances_per_s)} | "
                f"{binary_vs} |"
            )
    if v2_rows:
        lines += [
            "",
            "## The V2 path: JSON and binary, the same body to both servers",
            "",
            "V2 JSON: the same JSON body to both. V2 binary: the body tritonclient's HTTP client",
            "sends by default (every input binary, `binary_data_output: true`), written by its own",
            "code; the answers' binary outputs are decoded and checked key by key in the wrk",
            "script. Where MLServer refuses the binary extension (see Notes), ours in binary is",
            "compared with its V2 JSON, its best over HTTP, and the cell says so.",
            "",
            "| workload | MLServer setting | ours JSON inst/s | ours binary inst/s "
            "| MLServer JSON inst/s | MLServer binary inst/s | ours / MLServer, JSON "
            "| ours / MLServer, binary |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *v2_rows,
        ]
    grpc_rows = []
    for load in WORKLOADS[:3]:
        mine, http = find(run, GRPC_PATH, load.name), find(run, V2_PATH, load.name)
        for peer in peers:
            theirs = find(run, peer_grpc(peer), load.name)
            peer_http = find(run, peer, load.name)
            if not (mine or theirs):
                continue
            rate = [r and r.instances_per_s for r in (mine, theirs, http, peer_http)]
            p99 = ratio(mine.p99_200[0], theirs.p99_200[0]) if mine and theirs else "n/a"
            grpc_rows.append(
                f"| {load.name} | {peer} | {rate[0] or 0:,.0f} | {rate[1] or 0:,.0f} | "
                f"{ratio(rate[0], rate[1])} | {p99} | {ratio(rate[0], rate[2])} | "
                f"{ratio(rate[1], rate[3])} |"
            )
    if grpc_rows:
        lines += [
            "",
            "## The same V2 request over gRPC",
            "",
            "One serialised ModelInferRequest per body to both servers (key BYTES + one FP64",
            "input per feature in raw_input_contents, outputs key and the prediction), driven by",
            "bench/grpc_load.py; every answer checked by key.",
            "",
            "| workload | MLServer setting | ours gRPC inst/s | MLServer gRPC inst/s "
            "| ours / MLServer | p99 ours / MLServer | ours gRPC / ours V2 HTTP "
            "| MLServer gRPC / its HTTP |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *grpc_rows,
        ]
    if run.sweep:
        lines += [
            "",
            "## Concurrency sweep (x 1 instance per request, the same body)",
            "",
            "Ours on `/predict`, MLServer on its V2 JSON path. wrk retries at once after a",
            "refusal. Goodput: checked 200s per second. non-2xx: answers other than 200, per",
            "second and by status. Connection errors: connect, read and write errors and wrk's",
            "30 s timeouts (answers that never came). p99 of the 200s as above († where it is",
            "wrk's p99 of every answer); beside it wrk's own p99 of every answer, refusals",
            "included. Connections held / in accept queue: the most TCP connections the",
            "server's processes held open at once, and the most that waited, established but",
            "not yet accepted, in its listening socket's accept queue (sampled every 0.5 s).",
            "Between warm-up and measurement the harness waits until the server owes no",
            "answer to the warm-up's closed connections: its sockets drained, then one request",
            "of the same body answered (drained, in seconds). Load CPU: wrk's own CPU time over",
            "the run (100% = one core of the two it shares with the server).",
            "‡: the p99 passes a quarter of the run (or nothing was answered), so",
            "the answers still in flight when wrk stopped weigh on the goodput: undercounted.",
            "",
            "| server | connections | goodput (200s/s) | non-2xx/s | non-2xx by status "
            "| connection errors | connections held / in accept queue | drained s | wrong keys "
            "| p99 of the 200s ms "
            "| p99 of every answer ms | peak RSS MB | load CPU % |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {r.server} | {r.connections:,} | {goodput_text(r)} | "
                f"{r.non_2xx / r.seconds:,.0f} | {r.statuses} | {r.connection_errors} | "
                f"{r.summary.get('held_connections', '?')} / "
                f"{r.summary.get('accept_queue', '?')} | {r.summary.get('drained_s', 0):.1f} | "
                f"{int(r.summary['mismatched'])} | {p99_text(r)} | "
                f"{r.summary['p99_ms']:,.1f} | {r.peak_rss_mb:,.0f} | "
                f"{100 * r.wrk_cpu_s / r.seconds:.0f} |"
                for r in run.sweep
            ),
        ]
        if plot is not None:
            lines += ["", f"![goodput against concurrency]({plot.name})"]
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
    lines += capture_section(out.with_name("capture_ab.md"))
    lines += ["", "## Notes", "", *(f"- {n}" for n in run.notes)]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def keys_ab_ratios(ab: Path) -> dict[str, float]:
    """keyed / unkeyed by load, as bench/keys_ab.py last measured it, loading the two in
    turn (a finer A/B than this run's, whose servers are measured minutes apart)."""
    if not ab.exists():
        return {}
    ratios = {}
    for line in ab.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| W") and len(cells) > 3:
            ratios[cells[0].split(" ")[0]] = float(cells[3])
    return ratios


def capture_section(ab: Path) -> list[str]:
    """What capture costs (issue 17's budget: within 10% at W1-W3), as bench/capture_ab.py
    last measured it: its A/B runs two servers side by side, which this run does not."""
    if not ab.exists():
        return []
    table = [line for line in ab.read_text().splitlines() if line.startswith("|")]
    said = next((line for line in ab.read_text().splitlines() if line.startswith("Written")), "")
    return [
        "",
        "## Capture on / off (issue 17: within 10% at W1, W2 and W3)",
        "",
        f"From [`capture_ab.md`](capture_ab.md). {said}",
        "",
        *table,
    ]


def draw(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for server in dict.fromkeys(r.server for r in run.sweep):
        points = [(r.connections, r.goodput) for r in run.sweep if r.server == server]
        ax.plot(*zip(*points, strict=True), marker="o", label=server)
    ticks = sorted({r.connections for r in run.sweep})
    ax.set_xscale("log", base=4)
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set_xlabel("concurrent connections (1 instance per request, retried at once)")
    ax.set_ylabel("goodput: checked 200s per second")
    ax.set_title(f"Goodput against concurrency, {run.machine.get('cores', '?')} cores")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
