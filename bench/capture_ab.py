"""What capture costs, measured A/B (bench/ab.py): the service with KEYED_CAPTURE_DIR set
(features included, as by default) and without, served side by side and loaded in turn.
The issue's budget: within 10% at W1, W2 and W3. Afterwards, every row the capturing server
answered must be on disk or counted as dropped (its /metrics), and none dropped for the
budget to mean anything.

    .venv/bin/python bench/capture_ab.py [--rounds 4] [--seconds 8] [--out bench/capture_ab.md]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab import Side, arguments, interleave, table
from load import WORKLOADS, write_workload
from servers import BENCH, bench_setup, bentoml_server


def counted(url: str, prefix: str) -> float:
    """The sum of a counter's samples (all labels) in the server's /metrics."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def captured_rows(capture: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in capture.rglob("*.parquet"))


def main() -> int:
    args = arguments(__doc__, BENCH / "capture_ab.md")
    load_before = os.getloadavg()[0]
    with bench_setup("keyed-capture-ab") as setup:
        home, work, tag, pipeline = setup.home, setup.work, setup.tag, setup.pipeline
        loads = [w for w in WORKLOADS if w.name in args.loads.split(",")]
        files = {w.name: write_workload(work, w, pipeline, seed=i) for i, w in enumerate(loads)}
        capture = work / "capture"
        # A home of its own: two servers of one home share a Prometheus directory that each
        # start wipes, and the capturing server's drop count is read from its /metrics.
        own_home = work / "capture-home"
        shutil.copytree(Path(home) / "models", own_home / "models", symlinks=True)
        with contextlib.ExitStack() as stack:
            on = stack.enter_context(
                bentoml_server(
                    "capture on",
                    "service:KeyedPrediction",
                    str(own_home),
                    work,
                    MODEL_TAG=tag,
                    KEYED_CAPTURE_DIR=str(capture),
                )
            )
            off = stack.enter_context(
                bentoml_server("capture off", "service:KeyedPrediction", home, work, MODEL_TAG=tag)
            )
            on.name, off.name = "on", "off"
            a, b = Side(on), Side(off)
            interleave([a, b], loads, files, args, work)
            drops = counted(on.url, "keyed_capture_dropped_total")
            answered = counted(on.url, 'keyed_instances_total{outcome="predicted"}') + counted(
                on.url, 'keyed_instances_total{outcome="answered_with_error"}'
            )
        # the capturing server has stopped (SIGTERM): everything it buffered is written
        rows = captured_rows(capture / "predictions")
        intro = (
            f"Written by `bench/capture_ab.py`: {args.rounds} rounds of {args.seconds:g} s "
            "(after a warm-up) per load and server, capture on (features included) and off "
            f"loaded in turn; every answer checked. The capturing server answered {answered:,.0f} "
            f"instances (warm-ups included), wrote {rows:,} rows and dropped {drops:,.0f}."
        )
        lines = table("What capture costs (A/B, interleaved)", intro, a, b, loads, load_before)
        args.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0 if drops == 0 and rows == answered else 1


if __name__ == "__main__":
    sys.exit(main())
