"""What keys cost, measured A/B: the keyed service and its unkeyed variant served side by
side, loaded in turn (keyed, unkeyed, keyed, ...) so that drift in the machine's speed
falls on both alike. Answers checked as in the benchmark (bench/load.py).

Beside the throughput, the CPU the server's processes spent per instance over each measured
run (entry and runner workers together): on a machine shared with other work the
throughput moves with the neighbours' load, the CPU per instance much less.

    .venv/bin/python bench/keys_ab.py [--rounds 4] [--seconds 8] [--out bench/keys_ab.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import WORKLOADS, Result, write_workload, wrk
from servers import BENCH, Server, bench_setup, bentoml_server


def cpu_seconds(server: Server) -> float:
    """CPU time (user and system) of the server's process and every worker below it."""
    import psutil

    total = 0.0
    root = psutil.Process(server.process.pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += sum(process.cpu_times()[:2])
    return total


def measure(server: Server, load: Any, files: Path, fmt: str, args: Any, work: Path) -> Any:
    """bench/load.py's ``measure`` (a warm-up, then the measured run), with the server's CPU
    over the measured run."""
    wrk(server, files, fmt, load.connections, args.warmup, work)
    before = cpu_seconds(server)
    summary, cpu = wrk(server, files, fmt, load.connections, args.seconds, work)
    server_cpu = cpu_seconds(server) - before
    result = Result(server.name, load.name, load.connections, load.instances, summary, 0.0, cpu)
    instances = result.instances_per_s * result.seconds
    cpu_us = server_cpu / instances * 1e6 if instances else float("nan")
    print(
        f"  {server.name:8} {load.name:4} {result.instances_per_s:>10,.0f} inst/s  "
        f"server CPU {cpu_us:,.2f} us/instance  errors {result.errors}",
        flush=True,
    )
    return result, cpu_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=BENCH / "keys_ab.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with bench_setup("keyed-ab") as setup:
        home, work, tag, pipeline = setup.home, setup.work, setup.tag, setup.pipeline
        loads = [w for w in WORKLOADS if w.name in ("W1", "W2", "W3")]
        files = {w.name: write_workload(work, w, pipeline, seed=i) for i, w in enumerate(loads)}
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        with contextlib.ExitStack() as stack:
            keyed = stack.enter_context(
                bentoml_server("ab keyed", "service:KeyedPrediction", home, work, MODEL_TAG=tag)
            )
            unkeyed = stack.enter_context(
                bentoml_server(
                    "ab unkeyed",
                    "bench.unkeyed_service:UnkeyedPrediction",
                    home,
                    work,
                    MODEL_TAG=tag,
                )
            )
            keyed.name, unkeyed.name = "keyed", "unkeyed"
            for _ in range(args.rounds):
                for load in loads:
                    for server, fmt in ((keyed, load.shape), (unkeyed, f"{load.shape}_unkeyed")):
                        result, cpu_us = measure(
                            server, load, files[load.name][fmt], fmt, args, work
                        )
                        if result.errors:
                            raise RuntimeError(f"{server.name} {load.name}: {result.errors} errors")
                        rates.setdefault((server.name, load.name), []).append(
                            result.instances_per_s
                        )
                        cpu.setdefault((server.name, load.name), []).append(cpu_us)
        lines = [
            "# What keys cost (A/B, interleaved)",
            "",
            f"Written by `bench/keys_ab.py`: {args.rounds} rounds of {args.seconds:g} s per "
            "load and server, keyed and unkeyed loaded in turn; every answer checked. "
            f"Load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"({os.cpu_count()} CPUs): above the CPUs, other work shared the machine, and the "
            "throughput ratios move with it; the CPU per instance much less.",
            "",
            "| load | keyed inst/s (median) | unkeyed inst/s (median) | keyed / unkeyed "
            "| per-round ratios | server CPU per instance, keyed / unkeyed (us) "
            "| keyed / unkeyed CPU |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for load in loads:
            k, u = rates[("keyed", load.name)], rates[("unkeyed", load.name)]
            ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(k, u, strict=True))
            kc = statistics.median(cpu[("keyed", load.name)])
            uc = statistics.median(cpu[("unkeyed", load.name)])
            lines.append(
                f"| {load.name} ({load.connections} x {load.instances:,}) | "
                f"{statistics.median(k):,.0f} | {statistics.median(u):,.0f} | "
                f"{statistics.median(k) / statistics.median(u):.2f} | {ratios} | "
                f"{kc:,.2f} / {uc:,.2f} | {kc / uc:.2f} |"
            )
        args.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
