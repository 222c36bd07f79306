"""The benchmark: real servers under wrk, every answer checked key by key, baselines measured
in the same run.

    make bench          # this project, its baselines, and MLServer if bench-peers set it up
    make bench-peers    # installs MLServer 1.7 in bench/.venv-mlserver, then runs make bench

Workloads (each a warm-up, then --seconds of load):
  W1  64 connections x 1 instance (row format)     W2  16 x 100 (row format)
  W3  1 x 10,000 (columnar; rows too, for reference)
  W4  a 1,000,000-row table through the keyed-score CLI (this project only)
Servers: this project as deployed (defaults) on /predict and on its Open Inference Protocol
path with the very V2 bodies MLServer gets, and over gRPC (KEYED_GRPC_PORT) with the very
ModelInferRequest MLServer's gRPC gets (bench/grpc_load.py drives it: wrk speaks no
gRPC), the same with batching off, an unkeyed variant of the same endpoint
(bench/unkeyed_service.py), MLServer 1.7 + mlserver-sklearn with adaptive batching (bench/
peers/; over HTTP and gRPC), and the model in-process as the limit. A concurrency
sweep (1 to 256 connections x 1 instance) of this project and MLServer gives the plot.

Writes bench/results.md and bench/throughput.png. Wall-clock numbers are noisy on a shared
2-core machine: read the ratios, which are measured minutes apart in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
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
from report import GRPC_PATH, PEER, PEER_GRPC, V2_PATH, Run, draw, machine, report
from servers import (
    BENCH,
    MLSERVER_MODEL_SETTINGS,
    MLSERVER_VENV,
    bench_setup,
    bentoml_server,
    mlserver,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--sweep-seconds", type=float, default=8.0)
    parser.add_argument("--table-rows", type=int, default=1_000_000, help="W4; 0 skips it")
    parser.add_argument("--servers", default="keyed,off,unkeyed,mlserver")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument(
        "--only",
        default="predict,v2,grpc",
        help="which paths: predict (our /predict), v2 (V2 over HTTP), grpc (V2 over gRPC)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    args = parser.parse_args(argv)

    with bench_setup("keyed-bench") as setup:
        home, work, tag, model_path, pipeline = (
            setup.home, setup.work, setup.tag, setup.model_path, setup.pipeline
        )  # fmt: skip
        run = Run(machine=machine())
        print(f"model {tag}; data in {work}", flush=True)
        files = {
            load.name: write_workload(work, load, pipeline, seed=i)
            for i, load in enumerate(WORKLOADS)
        }
        run.in_process = in_process_rates(pipeline)
        print("  in-process rows/s:", {b: round(r) for b, r in run.in_process.items()}, flush=True)
        wanted = args.servers.split(",")
        has_peer = (MLSERVER_VENV / "bin" / "mlserver").exists()
        if "mlserver" in wanted and not has_peer:
            run.notes.append("MLServer not measured: run `make bench-peers` to install it.")
        only = set(args.only.split(","))
        from support import free_port

        env = {"MODEL_TAG": tag}
        servers: list[tuple[str, Any]] = []
        if "keyed" in wanted:
            servers.append(
                (
                    "keyed (this project)",
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
                    "keyed, batching off",
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
                    "unkeyed variant",
                    lambda: bentoml_server(
                        "unkeyed", "bench.unkeyed_service:UnkeyedPrediction", home, work, **env
                    ),
                )
            )
        if "mlserver" in wanted and has_peer:
            servers.append(("MLServer 1.7.1", lambda: mlserver(model_path, work)))
        for name, start in servers:
            print(f"{name}:", flush=True)
            with start() as server:
                server.name = name
                # MLServer's HTTP rows are its V2 path; everyone else's, /predict.
                http_rows = ("v2" if name == PEER else "predict") in only
                for load in WORKLOADS if http_rows else ():
                    fmt = {"MLServer 1.7.1": "v2", "unkeyed variant": f"{load.shape}_unkeyed"}.get(
                        name, load.shape
                    )
                    if name == "MLServer 1.7.1" and load.shape == "rows" and load.instances > 1000:
                        continue  # V2 is columnar only: W3 is measured once
                    source = files[load.name]["v2" if fmt == "v2" else fmt]
                    run.results.append(measure(server, load, source, fmt, args, work))
                if name == "keyed (this project)" and "v2" in only:
                    # The Open Inference Protocol path, with the very bodies MLServer gets.
                    server.name, server.path = V2_PATH, f"/v2/models/{tag.split(':')[0]}/infer"
                    for load in WORKLOADS:
                        if load.shape == "rows" and load.instances > 1000:
                            continue  # V2 is columnar: W3 is measured once
                        run.results.append(
                            measure(server, load, files[load.name]["v2"], "v2", args, work)
                        )
                    server.name, server.path = name, "/predict"
                if name in ("keyed (this project)", PEER) and "grpc" in only:
                    # The same V2 request over gRPC, as one ModelInferRequest to both.
                    model, prediction = (
                        ("iris", "predict") if name == PEER else (tag.split(":")[0], "prediction")
                    )
                    server.name = PEER_GRPC if name == PEER else GRPC_PATH
                    for load in WORKLOADS:
                        if load.shape == "rows" and load.instances > 1000:
                            continue  # V2 is columnar: W3 is measured once
                        run.results.append(
                            measure_grpc(
                                server, load, files[load.name]["v2"], model, prediction, args
                            )
                        )
                    server.name = name
                if (
                    "predict" in only
                    and not args.no_sweep
                    and name in ("keyed (this project)", "MLServer 1.7.1")
                ):
                    fmt = "v2" if name == "MLServer 1.7.1" else "rows"
                    for connections in (1, 4, 16, 64, 256):
                        load = Workload("sweep", connections, 1, 2000, "rows")
                        sweep_args = argparse.Namespace(warmup=3, seconds=args.sweep_seconds)
                        run.sweep.append(
                            measure(server, load, files["W1"][fmt], fmt, sweep_args, work)
                        )
                if name == "keyed (this project)" and args.table_rows and "predict" in only:
                    run.w4 = score_table(server, work, pipeline, args.table_rows)
                    print(f"  W4: {run.w4}", flush=True)
                roles = ", ".join(
                    f"{role} {mb:,.0f} MB" for role, mb in sorted(server.rss.peak_by_role.items())
                )
                run.notes.append(f"{name}: peak RSS per process: {roles}.")
        run.notes.append(
            "Formats: W1, W2 and 'W3 rows' send rows ({instances: [{key, features}]}); W3 "
            "sends columns ({keys, columns}); MLServer gets the same rows as a V2 request "
            "(keys as a BYTES input, one FP64 input per feature) and answers keys, predict "
            "and predict_proba; the unkeyed variant gets the same bodies without keys."
        )
        run.notes.append(
            "MLServer model settings: "
            + json.dumps({k: v for k, v in MLSERVER_MODEL_SETTINGS.items() if k.startswith("max")})
            + "; both servers take predict_proba once and the forest's prediction from it."
        )
        plot = BENCH / "throughput.png" if run.sweep else None
        if plot is not None:
            draw(run, plot)
        print(report(run, args.out, plot))
        return 0


if __name__ == "__main__":
    sys.exit(main())
