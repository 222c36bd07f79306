"""The benchmark: real servers under wrk, every answer checked key by key, baselines measured
in the same run.

    make bench          # this project, its baselines, and MLServer if bench-peers set it up
    make bench-peers    # installs MLServer 1.7 in bench/.venv-mlserver, then runs make bench

Workloads (each a warm-up, then --seconds of load):
  W1  64 connections x 1 instance (row format)     W2  16 x 100 (row format)
  W3  1 x 10,000 (columnar; rows too, for reference)
  W4  a 1,000,000-row table through the keyed-score CLI (this project only)
Servers: this project as deployed (defaults) on /predict, on its Open Inference Protocol
path with the very V2 bodies MLServer gets (V2 JSON, and V2 binary as tritonclient sends
it), and over gRPC (KEYED_GRPC_PORT) with the very ModelInferRequest MLServer's gRPC gets
(bench/grpc_load.py drives it: wrk speaks no gRPC); the same with batching off; an unkeyed
variant of the same endpoint (bench/unkeyed_service.py); MLServer 1.7 + mlserver-sklearn
(bench/peers/) in two settings, each its own row everywhere: adaptive batching 64 / 10 ms,
and MLServer's own defaults (servers.PEERS says what each sets); the model in-process as the
limit. A concurrency sweep (1 to 1,024 connections x 1 instance, the same body, retried at
once after a refusal) of this project and each MLServer setting gives goodput (checked 200s
per second), the non-2xx answers by status, connection errors and the p99 of the 200s, and
the plot; the report checks issue 18's targets against it.

Parts can be run alone: --servers keyed,off,unkeyed,mlserver,mlserver-defaults (and
mlserver-5ms, issue 18's 5 ms batching) and --only predict,v2,v2bin,grpc,sweep,w4.

Writes bench/results.md and bench/throughput.png (or --out and a .png beside it). Wall-clock
numbers are noisy on a shared 2-core machine: read the ratios, measured minutes apart in one
run. With the defaults the whole run takes about 22-25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from load import (
    WORKLOADS,
    Workload,
    in_process_rates,
    measure,
    measure_grpc,
    score_table,
    write_workload,
)
from report import (
    BATCHING_OFF,
    GRPC_PATH,
    OURS,
    UNKEYED,
    V2_BINARY,
    V2_PATH,
    Run,
    draw,
    machine,
    peer_binary,
    peer_grpc,
    report,
)
from servers import (
    BENCH,
    MLSERVER_VENV,
    PEERS,
    HeldConnections,
    Server,
    bench_setup,
    bentoml_server,
    mlserver,
    wait_until_drained,
)

PATHS = ("predict", "v2", "v2bin", "grpc", "sweep", "w4")


def probe_binary(server: Server, files: Path) -> tuple[bool, str]:
    """One V2 binary request (the first W1 body): does the server take the binary tensor
    data extension over HTTP? Returns (accepted, what it answered)."""
    data = Path(f"{files}.bodies").read_bytes()
    first_line, rest = data.split(b"\n", 1)
    header_length, length = (int(x) for x in first_line.split())
    request = urllib.request.Request(
        server.url + server.path,
        data=rest[:length],
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return True, f"{answer.status}"
    except urllib.error.HTTPError as error:
        body = error.read()[:160].decode(errors="replace").replace("|", "/").replace("\n", " ")
        return False, f"{error.code} {body}"
    except OSError as error:  # the server dropped the connection
        return False, f"no answer ({error})"


def caught_up(server: Server, files: Path) -> float:
    """After a warm-up: until the server owes nothing to the warm-up's closed connections.
    Its sockets first (``wait_until_drained``), then one request of the same body, answered
    whatever its status: a server that queues (MLServer) keeps working through requests
    whose clients are gone after it has closed their sockets, and this one waits behind
    them. Returns the seconds waited."""
    started = time.monotonic()
    wait_until_drained(server)
    body = Path(f"{files}.bodies").read_text().split("\n", 1)[0].encode()
    request = urllib.request.Request(
        server.url + server.path, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
    except urllib.error.HTTPError:
        pass  # a refusal is an answer: nothing is queued ahead of it
    return time.monotonic() - started


def sweep(
    run: Run, server: Server, files: Path, fmt: str, connections: list[int], args: Any, work: Path
) -> None:
    sweep_args = argparse.Namespace(warmup=args.sweep_warmup, seconds=args.sweep_seconds)
    for n in connections:
        load = Workload("sweep", n, 1, 2000, "rows")
        drained: list[float] = []
        with HeldConnections(server) as held:
            result = measure(
                server,
                load,
                files,
                fmt,
                sweep_args,
                work,
                after_warmup=lambda drained=drained: drained.append(caught_up(server, files)),
            )
        result.summary["held_connections"] = held.peak
        result.summary["accept_queue"] = held.peak_queued
        result.summary["drained_s"] = drained[0] if drained else 0.0
        run.sweep.append(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    # Long enough for MLServer without batching at 1,024 connections (about 110 answers/s:
    # a 9 s queue) to answer at all; the whole default run still takes under 30 minutes.
    parser.add_argument("--sweep-seconds", type=float, default=15.0)
    parser.add_argument("--sweep-warmup", type=float, default=5.0)
    parser.add_argument(
        "--sweep-connections",
        default="1,4,16,64,256,1024",
        help="connections of the sweep (issue 18's targets read 64, 256 and 1,024)",
    )
    parser.add_argument("--table-rows", type=int, default=1_000_000, help="W4; 0 skips it")
    parser.add_argument(
        "--servers",
        default="keyed,off,unkeyed,mlserver,mlserver-defaults",
        help="keyed, off (batching off), unkeyed, and MLServer settings: " + ", ".join(PEERS),
    )
    parser.add_argument("--no-sweep", action="store_true", help="the same as leaving out sweep")
    parser.add_argument(
        "--only",
        default=",".join(PATHS),
        help="which parts: predict (our /predict; MLServer's V2 JSON), v2 (V2 JSON over "
        "HTTP), v2bin (V2 binary over HTTP), grpc (V2 over gRPC), sweep, w4",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if args.no_sweep:
        only.discard("sweep")
    unknown = only - set(PATHS)
    wanted = args.servers.split(",")
    unknown |= set(wanted) - {"keyed", "off", "unkeyed", *PEERS}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    connections = [int(n) for n in args.sweep_connections.split(",")]
    started = time.monotonic()

    with bench_setup("keyed-bench") as setup:
        home, work, tag, model_path, pipeline = (
            setup.home, setup.work, setup.tag, setup.model_path, setup.pipeline
        )  # fmt: skip
        from keyed_serving.settings import get_settings

        run = Run(machine=machine(), deadline_s=get_settings().request_deadline_s)
        print(f"model {tag}; data in {work}", flush=True)
        files = {
            load.name: write_workload(work, load, pipeline, seed=i)
            for i, load in enumerate(WORKLOADS)
        }
        run.in_process = in_process_rates(pipeline)
        print("  in-process rows/s:", {b: round(r) for b, r in run.in_process.items()}, flush=True)
        has_peer = (MLSERVER_VENV / "bin" / "mlserver").exists()
        if any(name in PEERS for name in wanted) and not has_peer:
            run.notes.append("MLServer not measured: run `make bench-peers` to install it.")
        from support import free_port

        model = tag.split(":")[0]
        env = {"MODEL_TAG": tag}
        servers: list[tuple[str, str, Any]] = []
        if "keyed" in wanted:
            servers.append(
                (
                    "keyed",
                    OURS,
                    lambda: bentoml_server(
                        "keyed",
                        "service:KeyedPrediction",
                        home,
                        work,
                        KEYED_GRPC_PORT=str(free_port()),
                        **env,
                    ),
                )
            )
        if "off" in wanted:
            servers.append(
                (
                    "off",
                    BATCHING_OFF,
                    lambda: bentoml_server(
                        "keyed batching off",
                        "service:KeyedPrediction",
                        home,
                        work,
                        KEYED_BATCHING="false",
                        **env,
                    ),
                )
            )
        if "unkeyed" in wanted:
            servers.append(
                (
                    "unkeyed",
                    UNKEYED,
                    lambda: bentoml_server(
                        "unkeyed", "bench.unkeyed_service:UnkeyedPrediction", home, work, **env
                    ),
                )
            )
        for name in wanted:
            if name in PEERS and has_peer:
                peer = PEERS[name]
                servers.append(
                    ("peer", peer.name, lambda peer=peer: mlserver(model_path, work, peer))
                )
                run.peers.append(peer.name)
        for kind, name, start in servers:
            print(f"{name}:", flush=True)
            with start() as server:
                server.name = name
                run.notes.append(
                    f"{name}: listen backlog {server.backlog} (the kernel's accept queue of its "
                    "HTTP socket, `ss -ltn`)."
                )
                measure_server(run, kind, server, files, model, args, only, connections, work)
                if kind == "keyed" and "w4" in only and args.table_rows:
                    run.w4 = score_table(server, work, pipeline, args.table_rows)
                    print(f"  W4: {run.w4}", flush=True)
        run.notes.append(
            "Formats: W1, W2 and 'W3 rows' send rows ({instances: [{key, features}]}); W3 "
            "sends columns ({keys, columns}); MLServer gets the same rows as a V2 request "
            "(keys as a BYTES input, one FP64 input per feature) and answers keys, predict "
            "and predict_proba; the unkeyed variant gets the same bodies without keys."
        )
        for name in wanted:
            if name in PEERS and has_peer:
                peer = PEERS[name]
                run.notes.append(
                    f"{peer.name}: server settings {peer.server or '{}'} and model settings "
                    f"{peer.model or '{}'} over MLServer 1.7.1's defaults (parallel_workers 1, "
                    "max_batch_size 0 and max_batch_time 0: no adaptive batching), with the "
                    "access log off (debug false) in both."
                )
        run.notes.append(
            "Both servers take predict_proba once and the forest's prediction from it. "
            f"Our request deadline (KEYED_REQUEST_DEADLINE_S) is {run.deadline_s:g} s."
        )
        run.notes.append(
            f"Seconds per run: {args.seconds:g} measured after {args.warmup:g} of warm-up; "
            f"sweep points {args.sweep_seconds:g} after {args.sweep_warmup:g}. The whole run "
            f"took {(time.monotonic() - started) / 60:.0f} minutes."
        )
        plot = args.out.with_name("throughput.png") if run.sweep else None
        if plot is not None:
            draw(run, plot)
        print(report(run, args.out, plot))
        return 0


def measure_server(
    run: Run,
    kind: str,
    server: Server,
    files: dict[str, dict[str, Path]],
    model: str,
    args: Any,
    only: set[str],
    connections: list[int],
    work: Path,
) -> None:
    """Every part of the run that applies to this server, in order."""
    name = server.name
    columnar = [load for load in WORKLOADS if not (load.shape == "rows" and load.instances > 1000)]
    if kind == "peer":
        # MLServer's HTTP rows are its V2 JSON path (V2 is columnar: W3 is measured once).
        if only & {"predict", "v2"}:
            for load in columnar:
                run.results.append(measure(server, load, files[load.name]["v2"], "v2", args, work))
        if "v2bin" in only:
            accepted, answer = probe_binary(server, files["W1"]["v2bin"])
            if accepted:
                server.name = peer_binary(name)
                for load in columnar:
                    bodies = files[load.name]["v2bin"]
                    run.results.append(measure(server, load, bodies, "v2bin", args, work))
                server.name = name
            else:
                run.notes.append(
                    f"{name} refuses the V2 binary tensor data extension over HTTP (one "
                    f"tritonclient-style request answered: {answer}); ours in binary is "
                    "compared with its V2 JSON."
                )
        if "grpc" in only:
            server.name = peer_grpc(name)
            for load in columnar:
                run.results.append(
                    measure_grpc(server, load, files[load.name]["v2"], "iris", "predict", args)
                )
            server.name = name
        if "sweep" in only:
            sweep(run, server, files["W1"]["v2"], "v2", connections, args, work)
        return
    if "predict" in only:
        for load in WORKLOADS:
            fmt = f"{load.shape}_unkeyed" if kind == "unkeyed" else load.shape
            run.results.append(measure(server, load, files[load.name][fmt], fmt, args, work))
    if kind != "keyed":
        return
    v2_path = f"/v2/models/{model}/infer"
    for part, label in (("v2", V2_PATH), ("v2bin", V2_BINARY)):
        if part in only:
            # The Open Inference Protocol path, with the very bodies MLServer gets.
            server.name, server.path = label, v2_path
            for load in columnar:
                run.results.append(measure(server, load, files[load.name][part], part, args, work))
            server.name, server.path = name, "/predict"
    if "grpc" in only:
        # The same V2 request over gRPC, as one ModelInferRequest to both.
        server.name = GRPC_PATH
        for load in columnar:
            run.results.append(
                measure_grpc(server, load, files[load.name]["v2"], model, "prediction", args)
            )
        server.name = name
    if "sweep" in only:
        sweep(run, server, files["W1"]["rows"], "rows", connections, args, work)


if __name__ == "__main__":
    sys.exit(main())
