"""What keys cost, measured A/B (bench/ab.py): the keyed service and its unkeyed variant
served side by side, loaded in turn (keyed, unkeyed, keyed, ...).

    .venv/bin/python bench/keys_ab.py [--rounds 4] [--seconds 8] [--out bench/keys_ab.md]
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab import Side, arguments, interleave, table
from load import WORKLOADS, write_workload
from servers import BENCH, bench_setup, bentoml_server


def main() -> int:
    args = arguments(__doc__, BENCH / "keys_ab.md")
    load_before = os.getloadavg()[0]
    with bench_setup("keyed-ab") as setup:
        home, work, tag, pipeline = setup.home, setup.work, setup.tag, setup.pipeline
        loads = [w for w in WORKLOADS if w.name in args.loads.split(",")]
        files = {w.name: write_workload(work, w, pipeline, seed=i) for i, w in enumerate(loads)}
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
            a, b = Side(keyed), Side(unkeyed, "_unkeyed")
            interleave([a, b], loads, files, args, work)
        intro = (
            f"Written by `bench/keys_ab.py`: {args.rounds} rounds of {args.seconds:g} s per "
            "load and server, keyed and unkeyed loaded in turn (each going first every other "
            "round); every answer checked."
        )
        lines = table("What keys cost (A/B, interleaved)", intro, a, b, loads, load_before)
        args.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0


if __name__ == "__main__":
    sys.exit(main())
