"""Where the time goes: py-spy on the entry and the runner workers while wrk drives a load.

    .venv/bin/python bench/profile_workers.py [--load W1] [--seconds 15] [--path /predict]

--path v2 sends the V2 bodies to the Open Inference Protocol path, --path grpc the same
request over gRPC (bench/grpc_load.py). py-spy is the venv's, or PY_SPY=/path/to/py-spy.

Starts this project's server as the benchmark does (bench/harness.py: the same model,
bodies and answer checks), records both workers with py-spy (sampling, --idle so that
waiting shows too), and prints for each worker: how busy it was (CPU seconds over the
run), the functions with the most samples of their own, and the share of samples by
package. Raw stacks go to bench/profiles/ (collapsed format, one file per worker), which
any flame graph viewer opens (speedscope, inferno).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from load import WORKLOADS, measure, measure_grpc, write_workload  # noqa: E402
from servers import ROOT, bench_setup, bentoml_server  # noqa: E402
from support import free_port  # noqa: E402

PY_SPY = Path(os.environ.get("PY_SPY") or Path(sys.executable).parent / "py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(round(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def package(frame: str) -> str:
    """'func (pkg/mod.py:12)' -> 'pkg' (py-spy writes paths from site-packages or the
    standard library); our own code by module."""
    location = frame.rsplit("(", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    if "keyed_serving/" in location:
        return "keyed_serving/" + location.split("keyed_serving/", 1)[1].removesuffix(".py")
    if location.endswith("service.py") and Path(location).parent in {Path("."), ROOT}:
        return "service.py"
    return location.lstrip("<").split("/", 1)[0].removesuffix(".py")


def summarise(path: Path, cpu_s: float, seconds: float, top: int = 25) -> str:
    """py-spy samples only threads that are running (no --idle): shares of CPU samples."""
    own: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for name in dict.fromkeys(package(frame) for frame in frames[1:]):
            by_package[name] += count
    lines = [
        f"  CPU {cpu_s:.1f} s over {seconds:.0f} s ({100 * cpu_s / seconds:.0f}% of a core); "
        f"{total} samples of running threads",
        "  own samples (share of all):",
        *(f"    {100 * n / max(total, 1):5.1f}%  {f[:150]}" for f, n in own.most_common(top)),
        "  inclusive share by package (samples whose stack passes through it):",
        *(
            f"    {100 * n / max(total, 1):5.1f}%  {name}"
            for name, n in by_package.most_common(top)
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load", default="W1", choices=[w.name for w in WORKLOADS])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--path", default="/predict", help="/predict, v2 (the V2 path) or grpc (V2 over gRPC)"
    )
    parser.add_argument(
        "--connections", type=int, help="the load's connections instead of its own (W1: 64)"
    )
    parser.add_argument(
        "--service",
        default="service:KeyedPrediction",
        help="what to serve: bench.unkeyed_service:UnkeyedPrediction profiles the unkeyed variant",
    )
    args = parser.parse_args()
    load = next(w for w in WORKLOADS if w.name == args.load)
    if args.connections:
        load = dataclasses.replace(load, connections=args.connections)
    suffix = (
        ("-grpc" if args.path == "grpc" else "")
        + (f"-{args.connections}" if args.connections else "")
        + ("" if args.service == "service:KeyedPrediction" else "-" + args.service.split(":")[-1])
    )
    out = BENCH / "profiles"
    out.mkdir(exist_ok=True)
    with bench_setup("keyed-profile") as setup:
        files = write_workload(setup.work, load, setup.pipeline, seed=0)
        fmt = "v2" if args.path in ("v2", "grpc") else load.shape
        if args.service.endswith(":UnkeyedPrediction"):
            fmt += "_unkeyed"  # bodies without keys, answers checked by position
        grpc_port = {"KEYED_GRPC_PORT": str(free_port())} if args.path == "grpc" else {}
        with bentoml_server(
            "profiled",
            args.service,
            setup.home,
            setup.work,
            MODEL_TAG=setup.tag,
            **grpc_port,
        ) as server:
            if args.path == "v2":
                server.path = f"/v2/models/{setup.tag.split(':')[0]}/infer"
            import psutil

            workers = {
                ("runner" if "--service-name ModelRunner" in " ".join(p.cmdline()) else "entry"): p
                for p in psutil.Process(server.process.pid).children(recursive=True)
                if "_bentoml_impl.worker" in " ".join(p.cmdline())
            }
            cpu_before = {role: sum(p.cpu_times()[:2]) for role, p in workers.items()}
            recorders = {
                role: record(p.pid, args.seconds, out / f"{args.load}{suffix}-{role}.txt")
                for role, p in workers.items()
            }
            run_args = argparse.Namespace(warmup=1, seconds=args.seconds)
            result: list[object] = []
            model = setup.tag.split(":")[0]
            thread = threading.Thread(
                target=lambda: result.append(
                    measure_grpc(server, load, files[fmt], model, "prediction", run_args)
                    if args.path == "grpc"
                    else measure(server, load, files[fmt], fmt, run_args, setup.work)
                )
            )
            thread.start()
            for recorder in recorders.values():
                recorder.wait(timeout=args.seconds + 60)
            cpu_after = {role: sum(p.cpu_times()[:2]) for role, p in workers.items()}
            thread.join()
    for role in workers:
        print(f"{role} worker ({args.load}, {args.path}):")
        print(
            summarise(
                out / f"{args.load}{suffix}-{role}.txt",
                cpu_after[role] - cpu_before[role],
                args.seconds,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
