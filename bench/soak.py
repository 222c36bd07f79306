"""Soak: many concurrent clients against a real `bentoml serve`, some of them poisoned.

    .venv/bin/python bench/soak.py [--clients 64] [--seconds 60] [--poison 0.05] [--out FILE]

Starts the service (entry + runner, its own BentoML home) with a customer-churn model
that raises on a category it has never seen, then runs N clients for T seconds from a
separate process. Each request holds 1-100 instances with random keys (clients reuse
each other's keys); a share of instances is poisoned: an unseen category the model
raises on, NaN, 1e308, or a string where a number belongs. Most clients ask for
per-instance errors, some for all-or-nothing. Every answer is checked key by key against
the model's own predictions. Exit status 1 on any lost key, mispaired key, or clean
request failed because of someone else's poison. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

POISONS = ("unseen_category", "nan", "1e308", "string_for_number")


@dataclass
class Tally:
    requests: int = 0
    keys_sent: int = 0
    keys_predicted: int = 0
    keys_failed_by_key: int = 0
    keys_refused_retry_after: int = 0
    keys_lost: int = 0
    keys_mispaired: int = 0
    clean_requests_failed_by_poison: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def poison(features: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "unseen_category":
        return {**features, "plan": "platinum"}
    if kind == "nan":
        return {**features, "monthly_spend": math.nan}
    if kind == "1e308":
        return {**features, "tenure_months": 1e308}
    return {**features, "support_tickets": "many"}


def check(
    tally: Tally,
    status: int,
    headers: Any,
    body: bytes,
    instances: list[dict],
    poisoned: set,
    truth: dict,
    mode: str,
) -> None:
    sent = [i["key"] for i in instances]
    if status == 200:
        entries = json.loads(body)["predictions"]
        got = [e["key"] for e in entries]
        if got != sent:
            missing = len(set(map(repr, sent)) - set(map(repr, got)))
            tally.keys_lost += missing
            tally.keys_mispaired += len(sent) - missing
            tally.problem(f"200 with keys {got[:5]} for {sent[:5]}")
            return
        for entry in entries:
            key = entry["key"]
            if "error" in entry:
                tally.keys_failed_by_key += 1
                if repr(key) not in poisoned:
                    tally.clean_requests_failed_by_poison += 1
                    tally.problem(f"clean key {key!r} failed: {entry['error']}")
            elif repr(key) in poisoned or entry["prediction"] != truth[repr(key)]:
                tally.keys_mispaired += 1
                tally.problem(f"key {key!r}: got {entry['prediction']!r}")
            else:
                tally.keys_predicted += 1
    elif status in (400, 422) and mode == "reject" and poisoned:
        text = body.decode(errors="replace")
        if not any(p in text for p in poisoned):
            tally.problem(f"{status} names none of the poisoned keys: {text[:200]}")
            tally.keys_lost += len(sent)
        else:
            tally.keys_failed_by_key += len(sent)
    elif status in (429, 503, 504) and "Retry-After" in headers:
        tally.keys_refused_retry_after += len(sent)
    else:
        tally.keys_lost += len(sent)
        if status in (400, 422) and not poisoned:
            tally.clean_requests_failed_by_poison += 1
        tally.problem(f"status {status} without a reason by key: {body[:200]!r}")


async def drive(
    url: str,
    clients: int,
    seconds: float,
    share: float,
    pool: list[dict],
    pool_truth: list[Any],
    seed: int,
) -> Tally:
    import aiohttp

    tally = Tally()
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def client(number: int) -> None:
            rng = random.Random(seed * 1000 + number)
            while time.monotonic() < stop_at:
                size = min(100, max(1, int(rng.expovariate(1 / 12))))
                rows = rng.sample(range(len(pool)), size)
                keys: list[Any] = (
                    list(range(size))
                    if rng.random() < 0.5
                    else [f"c{number}-{rng.getrandbits(24):x}-{n}" for n in range(size)]
                )
                instances, poisoned, truth = [], set(), {}
                for key, row in zip(keys, rows, strict=True):
                    features = pool[row]
                    if rng.random() < share:
                        features = poison(features, rng.choice(POISONS))
                        poisoned.add(repr(key))
                    truth[repr(key)] = pool_truth[row]
                    instances.append({"key": key, "features": features})
                mode = "per_instance" if rng.random() < 0.8 else "reject"
                body = json.dumps({"instances": instances, "errors": mode}).encode()
                started = time.perf_counter()
                try:
                    async with session.post(
                        url + "/predict", data=body, headers={"content-type": "application/json"}
                    ) as r:
                        payload, status, headers = await r.read(), r.status, r.headers
                except (TimeoutError, aiohttp.ClientError) as exc:
                    tally.keys_lost += size
                    tally.statuses[type(exc).__name__] += 1
                    tally.problem(f"{type(exc).__name__}: {exc}")
                    continue
                tally.latencies.append(time.perf_counter() - started)
                tally.requests += 1
                tally.keys_sent += size
                tally.statuses[status] += 1
                check(tally, status, headers, payload, instances, poisoned, truth, mode)

        await asyncio.gather(*(client(n) for n in range(clients)))
    return tally


def load_process(args: tuple, out: Any) -> None:
    out.put(asyncio.run(drive(*args)))


def table(tally: Tally, clients: int, seconds: float, share: float) -> str:
    lat = sorted(tally.latencies) or [float("nan")]
    rows = [
        ("clients x seconds", f"{clients} x {seconds:g}"),
        ("poisoned share of instances", f"{share:.0%}"),
        ("requests answered", f"{tally.requests:,}"),
        ("keys sent", f"{tally.keys_sent:,}"),
        ("keys predicted (checked against the model)", f"{tally.keys_predicted:,}"),
        ("keys failed by key (their own reason)", f"{tally.keys_failed_by_key:,}"),
        ("keys refused with Retry-After (429/503)", f"{tally.keys_refused_retry_after:,}"),
        ("**keys lost**", f"**{tally.keys_lost}**"),
        ("**keys mispaired**", f"**{tally.keys_mispaired}**"),
        (
            "**clean requests failed by others' poison**",
            f"**{tally.clean_requests_failed_by_poison}**",
        ),
        (
            "status codes",
            ", ".join(f"{k}: {v:,}" for k, v in sorted(tally.statuses.items(), key=str)),
        ),
        (
            "latency p50 / p99 ms",
            f"{1000 * statistics.median(lat):.0f} / {1000 * lat[int(0.99 * (len(lat) - 1))]:.0f}",
        ),
        ("instances/s", f"{tally.keys_sent / seconds:,.0f}"),
    ]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keyed-bench-home-") as home:
        os.environ["BENTOML_HOME"] = home  # a store of its own, removed afterwards
        return run()


def run() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poison", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()

    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    import bentoml
    import joblib
    from support import make_customer_table, save_strict_copy, served

    from keyed_serving.model.spec import ModelSpec, to_frame
    from keyed_serving.model.store import MODEL_FILE
    from keyed_serving.model.training import train_and_save

    trained = train_and_save(
        make_customer_table(2000, seed=3),
        target="churned",
        key="customer_id",
        name="soak_customers",
    )
    tag = save_strict_copy(trained.tag, "soak_strict")
    stored = bentoml.models.get(tag)
    pipeline = joblib.load(stored.path_of(MODEL_FILE))
    spec = ModelSpec.from_metadata(tag, stored.info.metadata)
    names = [f.name for f in spec.features]
    sample = make_customer_table(5000, seed=4)
    pool = [
        {n: (None if row[n] != row[n] else row[n]) for n in names}
        for row in sample.to_dict("records")
    ]
    pool_truth = pipeline.predict(
        to_frame({n: [p[n] for p in pool] for n in names}, spec.features)
    ).tolist()

    with served(MODEL_TAG=tag) as url:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        process = multiprocessing.Process(
            target=load_process,
            args=(
                (url, args.clients, args.seconds, args.poison, pool, pool_truth, args.seed),
                queue,
            ),
        )
        process.start()
        tally = queue.get(timeout=args.seconds + 300)
        process.join(timeout=30)
    report = table(tally, args.clients, args.seconds, args.poison)
    print(report)
    for problem in tally.problems:
        print("problem:", problem)
    if args.out:
        Path(args.out).write_text(
            f"# Soak run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"`bench/soak.py --clients {args.clients} --seconds {args.seconds:g} "
            f"--poison {args.poison}` on {os.cpu_count()} cores.\n\n{report}\n"
        )
    bad = tally.keys_lost or tally.keys_mispaired or tally.clean_requests_failed_by_poison
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
