"""A/B of two servers of the same model, loaded in turn (A, B, A, ...) so that drift in the
machine's speed falls on both alike; answers checked as in the benchmark (bench/load.py).
bench/keys_ab.py (keys or none) and bench/capture_ab.py (capture on or off) are its users.

Beside the throughput, the CPU the server's processes spent per instance over each measured
run (entry and runner workers together): on a machine shared with other work the
throughput moves with the neighbours' load, the CPU per instance much less. And wrk's CPU
per instance: the load generator shares the server's cores, and its checks of an answer
are on the critical path of a one-connection load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import Result, Workload, wrk
from servers import Server


def cpu_seconds(server: Server) -> float:
    """CPU time (user and system) of the server's process and every worker below it."""
    import psutil

    total = 0.0
    root = psutil.Process(server.process.pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += sum(process.cpu_times()[:2])
    return total


def measure(
    server: Server, load: Workload, files: Path, fmt: str, args: Any, work: Path
) -> tuple[Result, float, float]:
    """bench/load.py's ``measure`` (a warm-up, then the measured run), with the server's and
    wrk's CPU per instance over the measured run (us)."""
    wrk(server, files, fmt, load.connections, args.warmup, work)
    before = cpu_seconds(server)
    summary, cpu = wrk(server, files, fmt, load.connections, args.seconds, work)
    server_cpu = cpu_seconds(server) - before
    result = Result(server.name, load.name, load.connections, load.instances, summary, 0.0, cpu)
    instances = result.instances_per_s * result.seconds
    cpu_us = server_cpu / instances * 1e6 if instances else float("nan")
    load_us = cpu / instances * 1e6 if instances else float("nan")
    print(
        f"  {server.name:8} {load.name:4} {result.instances_per_s:>10,.0f} inst/s  "
        f"server CPU {cpu_us:,.2f} us/instance  wrk {load_us:,.2f}  errors {result.errors}",
        flush=True,
    )
    return result, cpu_us, load_us


def arguments(description: str | None, out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--loads", default="W1,W2,W3", help="of bench/load.py's WORKLOADS")
    return parser.parse_args()


@dataclass
class Side:
    """One side of the A/B: a server, and the suffix of the body format it is sent."""

    server: Server
    suffix: str = ""
    rates: dict[str, list[float]] = field(default_factory=dict)  # by load
    cpu: dict[str, list[float]] = field(default_factory=dict)
    load_cpu: dict[str, list[float]] = field(default_factory=dict)  # wrk's


def interleave(
    sides: Sequence[Side], loads: Sequence[Workload], files: dict[str, Any], args: Any, work: Path
) -> None:
    """``args.rounds`` rounds: every load on every side in turn; a side's non-2xx stop it.
    The sides take turns going first (A B, then B A): what one run leaves behind on the
    machine falls on each side alike, not always on the one that follows."""
    for round_ in range(args.rounds):
        for load in loads:
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                fmt = f"{load.shape}{side.suffix}"
                result, cpu_us, load_us = measure(
                    side.server, load, files[load.name][fmt], fmt, args, work
                )
                if result.errors:
                    raise RuntimeError(f"{side.server.name} {load.name}: {result.errors} errors")
                side.rates.setdefault(load.name, []).append(result.instances_per_s)
                side.cpu.setdefault(load.name, []).append(cpu_us)
                side.load_cpu.setdefault(load.name, []).append(load_us)


def table(
    title: str, intro: str, a: Side, b: Side, loads: Sequence[Workload], load_before: float
) -> list[str]:
    """The A/B as a markdown table: medians, their ratio, the per-round ratios, CPU."""
    an, bn = a.server.name, b.server.name
    lines = [
        f"# {title}",
        "",
        f"{intro} Load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end ({os.cpu_count()} CPUs): above the CPUs, other work shared the machine, and "
        "the throughput ratios move with it; the CPU per instance much less.",
        "",
        f"| load | {an} inst/s (median) | {bn} inst/s (median) | {an} / {bn} "
        f"| per-round ratios | server CPU per instance, {an} / {bn} (us) | {an} / {bn} CPU "
        f"| wrk CPU per instance, {an} / {bn} (us) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for load in loads:
        ka, kb = a.rates[load.name], b.rates[load.name]
        ratios = ", ".join(f"{x / y:.2f}" for x, y in zip(ka, kb, strict=True))
        ca, cb = statistics.median(a.cpu[load.name]), statistics.median(b.cpu[load.name])
        la = statistics.median(a.load_cpu[load.name])
        lb = statistics.median(b.load_cpu[load.name])
        lines.append(
            f"| {load.name} ({load.connections} x {load.instances:,}) | "
            f"{statistics.median(ka):,.0f} | {statistics.median(kb):,.0f} | "
            f"{statistics.median(ka) / statistics.median(kb):.2f} | {ratios} | "
            f"{ca:,.2f} / {cb:,.2f} | {ca / cb:.2f} | {la:,.2f} / {lb:,.2f} |"
        )
    return lines
