"""What keys cost, measured A/B: the keyed service and its unkeyed variant served side by
side, loaded in turn (keyed, unkeyed, keyed, ...) so that drift in the machine's speed
falls on both alike. Answers checked as in the benchmark (bench/load.py).

    .venv/bin/python bench/keys_ab.py [--rounds 4] [--seconds 8] [--out bench/keys_ab.md]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import WORKLOADS, measure, write_workload
from servers import BENCH, bench_setup, bentoml_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=BENCH / "keys_ab.md")
    args = parser.parse_args()
    with bench_setup("keyed-ab") as setup:
        home, work, tag, pipeline = setup.home, setup.work, setup.tag, setup.pipeline
        loads = [w for w in WORKLOADS if w.name in ("W1", "W2", "W3")]
        files = {w.name: write_workload(work, w, pipeline, seed=i) for i, w in enumerate(loads)}
        rates: dict[tuple[str, str], list[float]] = {}
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
                        result = measure(server, load, files[load.name][fmt], fmt, args, work)
                        if result.errors:
                            raise RuntimeError(f"{server.name} {load.name}: {result.errors} errors")
                        rates.setdefault((server.name, load.name), []).append(
                            result.instances_per_s
                        )
        lines = [
            "# What keys cost (A/B, interleaved)",
            "",
            f"Written by `bench/keys_ab.py`: {args.rounds} rounds of {args.seconds:g} s per "
            "load and server, keyed and unkeyed loaded in turn; every answer checked.",
            "",
            "| load | keyed inst/s (median) | unkeyed inst/s (median) | keyed / unkeyed "
            "| per-round ratios |",
            "|---|---:|---:|---:|---|",
        ]
        for load in loads:
            k, u = rates[("keyed", load.name)], rates[("unkeyed", load.name)]
            ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(k, u, strict=True))
            lines.append(
                f"| {load.name} ({load.connections} x {load.instances:,}) | "
                f"{statistics.median(k):,.0f} | {statistics.median(u):,.0f} | "
                f"{statistics.median(k) / statistics.median(u):.2f} | {ratios} |"
            )
        args.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
