"""The largest file the synchronous /predict_file answers within the entry's traffic timeout.

    .venv/bin/python bench/file_timeout.py [--rows 100000,200000] [--out bench/file_timeout.md]

A model trained on the customer-like table of tests/support.py (`make_customer_table`),
one real `bentoml serve`, and CSV uploads of that table at each size in `--rows`, one at a
time: the seconds each took and its rows/s. The synchronous route answers only once the
whole file is scored, so a file that takes longer than the entry's `traffic.timeout`
(35 s by default) gets BentoML's 504: the table gives the largest size answered and the
smallest refused. Loopback only; a few minutes at most.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
TIMEOUT_S = 35.0  # service.py: the entry's traffic timeout, request_deadline_s + 5


def main() -> int:
    from servers import bench_home

    with bench_home("keyed-bench") as (_, work):
        return run(work)


def run(work: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="100000,200000")
    parser.add_argument("--out", default=str(ROOT / "bench" / "file_timeout.md"))
    args = parser.parse_args()

    import httpx
    from support import Server, make_customer_table

    training = work / "train.csv"
    make_customer_table(1500).to_csv(training, index=False)
    trained = subprocess.run(
        [
            *(sys.executable, "train.py", "--csv", str(training), "--target", "churned"),
            *("--key", "customer_id", "--name", "customers"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    tag = trained.stdout.split()[1]

    rows_out = []
    answered: list[int] = []
    refused: list[int] = []
    server = Server(MODEL_TAG=tag)
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            table = make_customer_table(rows, seed=rows).drop(columns=["churned"])
            path = work / f"customers-{rows}.csv"
            table.to_csv(path, index=False)
            started = time.perf_counter()
            with path.open("rb") as upload, httpx.Client(timeout=300) as http:
                response = http.post(
                    f"{server.url}/predict_file",
                    files={"file": (path.name, upload)},
                    data={"key": "customer_id"},
                )
            seconds = time.perf_counter() - started
            rate = rows / seconds
            (answered if response.status_code == 200 else refused).append(rows)
            size = path.stat().st_size / 1024 / 1024
            row = (
                f"| {rows:,} | {size:.1f} | {response.status_code} | {seconds:.1f} | {rate:,.0f} |"
            )
            print(row, flush=True)
            rows_out.append(row)
    finally:
        server.stop()
    # Not extrapolated from a rate: measured, the time per row grows with the file.
    largest = f"{max(answered):,} rows were answered" if answered else "no size was answered"
    smallest = f"; {min(refused):,} rows were not (504)" if refused else ""
    text = "\n".join(
        [
            "# /predict_file against its timeout",
            "",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: CSV uploads of "
            f"`make_customer_table` (tests/support.py), one at a time, one server, "
            f"{os.cpu_count()} cores ({platform.machine()}).",
            "",
            "| rows | MiB | status | s | rows/s |",
            "|---|---|---|---|---|",
            *rows_out,
            "",
            f"Within {TIMEOUT_S:.0f} s (the entry's traffic timeout) {largest}{smallest}: "
            "larger files go to /predict_file_task, or to keyed-score.",
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
