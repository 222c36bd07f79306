"""What compressing answers costs and saves: the real service with answer compression on
and off, through KeyedClient (httpx, which asks for gzip) and through the same client
asking for none.

    .venv/bin/python bench/compression.py [--seconds 10] [--rounds 3] [--out bench/compression.md]

Two servers run side by side (KEYED_ANSWER_COMPRESSION=true and false), measured in turns,
round after round, so that drift on a shared machine falls on both alike. Workloads:
  W1-like  64 requests in flight x 1 instance (KeyedClient, chunk_rows=1, concurrency=64)
  W2-like  16 x 100
  W3-like  one request at a time x 10,000 instances (chunk_rows=10,000, concurrency=1)
Every answer is checked against the model's own predictions, key by key (KeyedClient
checks the keys; the predictions are compared here). Measured per cell: requests/s, the
server's and the client's CPU per request (both share the machine's cores), and the bytes
of the answers as they came over the wire. Beside it, in-process: compressing the W3
answer at zlib levels 1, 6 and 9, and answers of 1 to 100 instances (for the minimum
size). Loopback only; a slower link is estimated from the bytes, not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import platform
import random
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from load import make_features  # noqa: E402
from servers import BENCH, bench_setup, bentoml_server  # noqa: E402

from keyed_serving.client.keyed_client import KeyedClient  # noqa: E402


@dataclass
class Load:
    name: str
    concurrency: int
    instances: int  # per request


LOADS = [Load("W1-like", 64, 1), Load("W2-like", 16, 100), Load("W3-like", 1, 10_000)]
# KeyedClient is httpx: it asks for "gzip, deflate, br" unless told otherwise.
CLIENTS = {"KeyedClient (asks gzip)": None, "KeyedClient, Accept-Encoding: identity": "identity"}


class Wire(httpx.AsyncBaseTransport):
    """KeyedClient's transport, counting what came over the wire; optionally with another
    Accept-Encoding."""

    def __init__(self, accept_encoding: str | None) -> None:
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=256))
        self.accept_encoding = accept_encoding
        self.answers = self.compressed = self.wire_bytes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.accept_encoding is not None:
            request.headers["accept-encoding"] = self.accept_encoding
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/predict":
            self.answers += 1
            self.compressed += "content-encoding" in response.headers
            self.wire_bytes += int(response.headers.get("content-length", 0))
        return response

    async def aclose(self) -> None:
        pass  # KeyedClient closes its transport after every call: kept for the next one


@dataclass
class Cell:
    server: str
    load: str
    client: str
    requests_per_s: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)  # per request
    client_cpu_ms: list[float] = field(default_factory=list)
    wire_bytes: float = 0.0  # per answer
    compressed: float = 0.0  # share of answers


def family_cpu_s(pid: int) -> float:
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_cell(
    url: str, pid: int, load: Load, accept: str | None, seconds: float, data: Any, cell: Cell
) -> None:
    frame, expected = data[load.name]
    wire = Wire(accept)
    client = KeyedClient(
        url,
        chunk_rows=load.instances,
        concurrency=load.concurrency,
        max_chunk_bytes=64 * 2**20,
        transport=wire,
    )

    async def score() -> int:
        await client.ascore(frame.head(1), "row_id")  # the model's info, a connection
        wire.answers = wire.compressed = wire.wire_bytes = 0
        requests = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            scored, failed = await client.ascore(frame, "row_id")
            if failed or scored["prediction"].tolist() != expected:
                raise AssertionError(f"{cell.server} {load.name}: answers differ from the model's")
            requests += len(frame) // load.instances
        await wire.inner.aclose()
        return requests

    server_before, client_before = family_cpu_s(pid), time.process_time()
    started = time.perf_counter()
    requests = asyncio.run(score())
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = family_cpu_s(pid) - server_before, time.process_time() - client_before
    cell.requests_per_s.append(requests / elapsed)
    cell.server_cpu_ms.append(server_cpu / requests * 1000)
    cell.client_cpu_ms.append(client_cpu / requests * 1000)
    cell.wire_bytes = wire.wire_bytes / max(wire.answers, 1)
    cell.compressed = wire.compressed / max(wire.answers, 1)
    print(
        f"  {cell.server:16} {load.name:8} {cell.client:38} {cell.requests_per_s[-1]:8.1f} req/s"
        f"  server {cell.server_cpu_ms[-1]:6.2f} ms/req  client {cell.client_cpu_ms[-1]:6.2f}"
        f"  {cell.wire_bytes:>9,.0f} B/answer",
        flush=True,
    )


def level_table(url: str, frame: Any) -> tuple[list[str], list[str]]:
    """The W3 answer as the server writes it, compressed in-process at several levels; and
    answers of 1 to 100 instances at level 1 (bytes saved against the time it takes)."""
    import pandas as pd

    def answer(rows: pd.DataFrame) -> bytes:
        body = {
            "keys": rows["row_id"].tolist(),
            "columns": rows.drop(columns="row_id").to_dict("list"),
        }
        got = httpx.post(f"{url}/predict", json=body, headers={"accept-encoding": "identity"})
        got.raise_for_status()
        return got.content

    def timed(body: bytes, level: int) -> tuple[float, bytes]:
        runs, out = 0, b""
        started = time.perf_counter()
        while time.perf_counter() - started < 0.3 or runs < 3:
            compressor = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            out = compressor.compress(body) + compressor.flush()
            runs += 1
        return (time.perf_counter() - started) / runs * 1000, out

    w3 = answer(frame.head(10_000))
    levels = [
        "| zlib level | ms to compress | bytes | ratio | ms to decompress |",
        "|---:|---:|---:|---:|---:|",
    ]
    for level in (1, 6, 9):
        ms, out = timed(w3, level)
        started = time.perf_counter()
        for _ in range(10):
            gzip.decompress(out)
        inflate_ms = (time.perf_counter() - started) / 10 * 1000
        levels.append(
            f"| {level} | {ms:.2f} | {len(out):,} | {len(w3) / len(out):.2f} | {inflate_ms:.2f} |"
        )
    levels.insert(0, f"The W3 answer: {len(w3):,} bytes of JSON (10,000 keys, columns).\n")
    sizes = [
        "| instances | answer bytes | gzip bytes | ratio | µs to compress (level 1) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in (1, 2, 5, 10, 20, 100):
        body = answer(frame.head(n))
        ms, out = timed(body, 1)
        sizes.append(
            f"| {n} | {len(body):,} | {len(out):,} | {len(body) / len(out):.2f} | {ms * 1000:.0f} |"
        )
    return levels, sizes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=BENCH / "compression.md")
    args = parser.parse_args()

    import pandas as pd

    with bench_setup("keyed-compression") as setup:
        rng = random.Random(11)
        data = {}
        for load in LOADS:
            rows = load.instances * max(load.concurrency * 40, 6)
            frame = pd.DataFrame(make_features(rng, rows))
            expected = setup.pipeline.predict(frame).tolist()
            frame.insert(0, "row_id", [f"{load.name}-{i}" for i in range(rows)])
            data[load.name] = (frame, expected)
        env = {"MODEL_TAG": setup.tag}
        cells: dict[tuple[str, str, str], Cell] = {}
        with (
            bentoml_server(
                "compression on",
                "service:KeyedPrediction",
                setup.home,
                setup.work,
                KEYED_ANSWER_COMPRESSION="true",
                **env,
            ) as on,
            bentoml_server(
                "compression off",
                "service:KeyedPrediction",
                setup.home,
                setup.work,
                KEYED_ANSWER_COMPRESSION="false",
                **env,
            ) as off,
        ):
            servers = {"compression on": on, "compression off": off}
            for load in LOADS:  # a warm-up of each server and load
                for server in servers.values():
                    run_cell(
                        server.url,
                        server.process.pid,
                        load,
                        None,
                        2,
                        data,
                        Cell("warm-up", load.name, "-"),
                    )
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}:", flush=True)
                for load in LOADS:
                    for name, server in turns(servers, round_):
                        for client, accept in CLIENTS.items():
                            cell = cells.setdefault(
                                (load.name, name, client), Cell(name, load.name, client)
                            )
                            run_cell(
                                server.url,
                                server.process.pid,
                                load,
                                accept,
                                args.seconds,
                                data,
                                cell,
                            )
            levels, sizes = level_table(on.url, data["W3-like"][0])
        text = report(cells, levels, sizes, args)
    args.out.write_text(text)
    print(text)
    return 0


def turns(servers: dict[str, Any], round_: int) -> list[tuple[str, Any]]:
    """The servers in this round's order: which goes first alternates, round by round."""
    order = list(servers.items())
    return order if round_ % 2 == 0 else order[::-1]


def paired(on: list[float], off: list[float]) -> str:
    """The median of the rounds' ratios, and their range."""
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(
    cells: dict[tuple[str, str, str], Cell], levels: list[str], sizes: list[str], args: Any
) -> str:
    median = statistics.median
    lines = [
        "# Compressed answers: what they cost and save",
        "",
        f"Written by `bench/compression.py` on {time.strftime('%Y-%m-%d %H:%M UTC')}: "
        f"{os.cpu_count()} cores ({platform.machine()}), client and servers on the same cores, "
        f"loopback. {args.rounds} rounds of {args.seconds:g} s per cell, in turns "
        "(which server goes first alternates); medians shown. "
        "Every answer was checked against the model's own predictions, key by key.",
        "",
        "| workload | server | client | req/s | server CPU ms/req | client CPU ms/req "
        "| bytes/answer on the wire | compressed |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (load, server, client), c in cells.items():
        lines.append(
            f"| {load} | {server} | {client} | {median(c.requests_per_s):,.1f} | "
            f"{median(c.server_cpu_ms):.2f} | {median(c.client_cpu_ms):.2f} | "
            f"{c.wire_bytes:,.0f} | {c.compressed:.0%} |"
        )
    lines += [
        "",
        "## Ratios (compression on / off, the same client)",
        "",
        "Each the median of the rounds' own ratios (on and off measured a minute apart in "
        "one round): req/s moved by up to half between rounds of the same cell here, as "
        "the client and both servers share two cores; CPU per request moved less.",
        "",
        "| workload | client | req/s | server CPU/req | client CPU/req | bytes on the wire |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for load in LOADS:
        for client in CLIENTS:
            on = cells[(load.name, "compression on", client)]
            off = cells[(load.name, "compression off", client)]
            lines.append(
                f"| {load.name} | {client} | {paired(on.requests_per_s, off.requests_per_s)} | "
                f"{paired(on.server_cpu_ms, off.server_cpu_ms)} | "
                f"{paired(on.client_cpu_ms, off.client_cpu_ms)} | "
                f"{on.wire_bytes / off.wire_bytes:.2f} |"
            )
    w3_on = cells[("W3-like", "compression on", "KeyedClient (asks gzip)")]
    w3_off = cells[("W3-like", "compression off", "KeyedClient (asks gzip)")]
    lines += [
        "",
        "## A slower link, estimated from the bytes (not measured)",
        "",
        "Time to carry one W3 answer at the link's full rate, beside the W3 request's "
        "time on loopback.",
        "",
        "| link | plain answer ms | compressed answer ms | loopback request ms, off / on |",
        "|---|---:|---:|---:|",
    ]
    for label, bits_per_s in (("100 Mbit/s", 1e8), ("1 Gbit/s", 1e9), ("10 Gbit/s", 1e10)):
        lines.append(
            f"| {label} | {w3_off.wire_bytes * 8 / bits_per_s * 1000:.1f} | "
            f"{w3_on.wire_bytes * 8 / bits_per_s * 1000:.1f} | "
            f"{1000 / median(w3_off.requests_per_s):.1f} / "
            f"{1000 / median(w3_on.requests_per_s):.1f} |"
        )
    lines += [
        "",
        "## Compression levels, in-process",
        "",
        *levels,
        "",
        "## Small answers (for the minimum size), in-process",
        "",
        *sizes,
        "",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
