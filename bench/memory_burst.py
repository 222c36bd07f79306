"""Peak RSS of a real server under a burst of large /predict bodies.

    .venv/bin/python bench/memory_burst.py [--clients 8] [--budgets 134217728,68719476736]
        [--out bench/memory_burst.md]

For each body kind and each body budget (KEYED_BODY_BUDGET_BYTES), a real `bentoml serve`
(entry + runner) gets `--clients` concurrent requests at once; the RSS of the entry worker
and of the whole process tree is sampled every 20 ms with psutil until all are answered.
Body kinds:

- valid: 100,000 instances (the most a request may hold), 250-character keys, rows
  format: about 36 MB, validated, predicted and answered in full;
- dense: as many small numbers as KEYED_MAX_BODY_VALUES lets through, padded to just
  under 64 MiB (KEYED_MAX_BODY_BYTES): decoded whole, then refused (400, too many
  instances): the most Python objects a body that passes the gate becomes.

Loopback only; a few minutes at most. Prints and saves a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
MIB = 1024 * 1024


def valid_body() -> bytes:
    import orjson

    instances = [
        {
            "key": f"{n:08d}-" + "k" * 241,
            "features": {f: round(1 + (n * (i + 3)) % 60 / 10, 1) for i, f in enumerate(FEATURES)},
        }
        for n in range(100_000)
    ]
    return orjson.dumps({"instances": instances})


def dense_body(max_values: int, max_bytes: int) -> bytes:
    head, tail = b'{"keys": [', b"]}"
    numbers = max_values - 10
    width = (max_bytes - len(head) - len(tail) - 64) // numbers  # bytes per number
    unit = (b"1" * max(width - 3, 1) + b".5,")[-width:]
    return head + unit * (numbers - 1) + b"1" + tail


def burst(url: str, body: bytes, clients: int, entry: object, tree: list) -> dict:
    import httpx
    import psutil

    assert isinstance(entry, psutil.Process)
    peak = {"entry": 0, "tree": 0}
    base = {"entry": entry.memory_info().rss, "tree": sum(p.memory_info().rss for p in tree)}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak["entry"] = max(peak["entry"], entry.memory_info().rss)
                peak["tree"] = max(peak["tree"], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.02)  # the sampling period

    def send(_: int) -> int:
        with httpx.Client(timeout=120) as http:
            response = http.post(
                f"{url}/predict", content=body, headers={"content-type": "application/json"}
            )
            return response.status_code

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = Counter(pool.map(send, range(clients)))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {"base": base, "peak": peak, "statuses": statuses, "seconds": seconds}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keyed-bench-home-") as home:
        os.environ["BENTOML_HOME"] = home
        os.environ["BENTOML_DO_NOT_TRACK"] = "True"
        return run()


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--budgets", default=f"{128 * MIB},{64 * 1024 * MIB}")
    parser.add_argument("--kinds", default="valid,dense")
    parser.add_argument("--out", default=str(ROOT / "bench" / "memory_burst.md"))
    args = parser.parse_args()

    import psutil
    from support import Server

    from keyed_serving.model.training import train_default
    from keyed_serving.settings import Settings

    tag = train_default().tag
    defaults = Settings()
    bodies = {
        "valid": valid_body,
        "dense": lambda: dense_body(defaults.max_body_values, defaults.max_body_bytes),
    }
    rows = []
    for kind in args.kinds.split(","):
        body = bodies[kind]()
        for budget in (int(b) for b in args.budgets.split(",")):
            server = Server(MODEL_TAG=tag, KEYED_BODY_BUDGET_BYTES=str(budget))
            try:
                entry = server.worker("KeyedPrediction")
                tree = [
                    psutil.Process(server.process.pid),
                    *psutil.Process(server.process.pid).children(recursive=True),
                ]
                result = burst(server.url, body, args.clients, entry, tree)
            finally:
                server.stop()
            statuses = ", ".join(f"{n} x {s}" for s, n in sorted(result["statuses"].items()))
            row = (
                f"| {kind} | {len(body) / MIB:.1f} | {budget // MIB} | {statuses} "
                f"| {result['base']['entry'] / MIB:.0f} | {result['peak']['entry'] / MIB:.0f} "
                f"| {result['peak']['tree'] / MIB:.0f} | {result['seconds']:.1f} |"
            )
            print(row, flush=True)
            rows.append(row)
    text = "\n".join(
        [
            "# Entry memory under a burst of large bodies",
            "",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.clients} "
            f"concurrent /predict requests of one body each, default iris model, "
            f"{os.cpu_count()} cores ({platform.machine()}); RSS sampled every 20 ms. "
            "Tree: the server, its entry and runner workers.",
            "",
            "| body | MiB | budget MiB | answers | entry idle MiB | entry peak MiB "
            "| tree peak MiB | s |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
