"""Where the memory of each server goes: every process of the server sampled (RSS, PSS, USS)
idle and under W1, W2 and W3, for this project (in one or more variants: environment
settings such as glibc's malloc knobs) and for MLServer, in one run.

    python bench/memory_profile.py                      # ours as configured, and MLServer
    python bench/memory_profile.py --before main        # and ours at another git revision
    python bench/memory_profile.py --variant "arenas 2=MALLOC_ARENA_MAX=2"

RSS counts every page a process has in memory, shared or not: a library's pages mapped by
three processes count three times in a sum of RSS (the harness's "peak RSS"). PSS divides
each shared page between the processes that map it, USS counts only a process's own pages;
a sum of PSS is what the server costs the machine. The peak of a sum is taken at one
instant (samples every 0.2 s), so it is not the sum of the per-process peaks.

Writes bench/memory_profile.md (or --out), keeping the section of it written by hand
(from FINDINGS on). Numbers move between runs on a shared machine; compare the servers and
variants of one run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import WORKLOADS, write_workload, wrk
from servers import (
    BENCH,
    MLSERVER_VENV,
    ROOT,
    Server,
    bench_setup,
    bentoml_server,
    mlserver,
)

MB = 2**20
FINDINGS = "## What the profile showed"  # the report's part written by hand, kept on a re-run
PHASES = ("idle", "W1", "W2", "W3", "after")


def role_of(process: Any, root_pid: int) -> str:
    cmdline = " ".join(process.cmdline())
    if "--service-name ModelRunner" in cmdline:
        return "runner worker"
    if "_bentoml_impl.worker" in cmdline:
        return "entry worker"
    if "bentoml serve" in cmdline:
        return "supervisor (bentoml serve)"
    if process.pid == root_pid:
        return "mlserver (main)"
    if "resource_tracker" in cmdline:
        return "mlserver (resource tracker)"
    if "multiprocessing" in cmdline:
        return "mlserver (parallel worker)"
    return "other: " + cmdline[:60]


@dataclass
class Peak:
    rss: float = 0.0
    pss: float = 0.0
    uss: float = 0.0

    def take(self, rss: float, pss: float, uss: float) -> None:
        self.rss, self.pss, self.uss = max(self.rss, rss), max(self.pss, pss), max(self.uss, uss)


@dataclass
class Phase:
    by_role: dict[str, Peak] = field(default_factory=lambda: collections.defaultdict(Peak))
    total: Peak = field(default_factory=Peak)
    rate: float | None = None  # instances/s of the measured run
    errors: int = 0


class Sampler:
    """RSS, PSS and USS of a process and all its children, every 0.2 s, into the current
    phase's peaks."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.phases: dict[str, Phase] = {}
        self.phase = self.start("idle")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start(self, name: str) -> Phase:
        self.phase = self.phases.setdefault(name, Phase())
        return self.phase

    def sample(self) -> None:
        import psutil

        try:
            family = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = Peak()
        for process in family:
            try:
                memory = process.memory_full_info()
                role = role_of(process, self.root.pid)
            except psutil.Error:
                continue
            rss, pss, uss = memory.rss / MB, memory.pss / MB, memory.uss / MB
            self.phase.by_role[role].take(rss, pss, uss)
            total.rss, total.pss, total.uss = total.rss + rss, total.pss + pss, total.uss + uss
        self.phase.total.take(total.rss, total.pss, total.uss)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def mappings(root_pid: int) -> dict[str, list[tuple[str, float]]]:
    """Per process, its resident memory by what is mapped: the anonymous heap, or the
    package (site-packages folder) or library a file belongs to."""
    import psutil

    root = psutil.Process(root_pid)
    found = {}
    for process in [root, *root.children(recursive=True)]:
        sizes: collections.Counter[str] = collections.Counter()
        with contextlib.suppress(psutil.Error):
            for mapped in process.memory_maps(grouped=True):
                path = mapped.path
                if not path.startswith("/"):
                    name = "anonymous (heap, stacks)"
                elif "site-packages/" in path:
                    name = path.split("site-packages/", 1)[1].split("/", 1)[0]
                else:
                    name = path.rsplit("/", 1)[-1]
                sizes[re.sub(r"\.(libs|so.*)$", "", name)] += mapped.rss / MB
            found[role_of(process, root_pid)] = sizes.most_common(8)
    return found


@dataclass
class Profile:
    name: str
    phases: dict[str, Phase]
    maps: dict[str, list[tuple[str, float]]]


def load_phases(
    server: Server,
    sampler: Sampler,
    files: dict[str, dict[str, Path]],
    args: Any,
    work: Path,
    peer: bool,
) -> None:
    time.sleep(args.idle)  # idle: the server as it starts, sampled meanwhile
    sampler.sample()
    for load in WORKLOADS:
        if load.name not in ("W1", "W2", "W3"):
            continue
        phase = sampler.start(load.name)
        fmt = "v2" if peer else load.shape
        source = files[load.name][fmt]
        wrk(server, source, fmt, load.connections, args.warmup, work)
        summary, _ = wrk(server, source, fmt, load.connections, args.seconds, work)
        phase.rate = summary["checked"] / float(summary["duration_s"]) * load.instances
        phase.errors = int(summary["failed"] + summary["mismatched"] + summary["timeouts"])
        print(
            f"  {load.name}: {phase.rate:,.0f} inst/s, errors {phase.errors}, "
            f"peak RSS {phase.total.rss:.0f} MB, PSS {phase.total.pss:.0f} MB",
            flush=True,
        )
    sampler.start("after")
    time.sleep(args.idle)  # after the load: what stays
    sampler.sample()


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """This checkout, or the code of ``revision`` in a temporary folder (with this checkout's
    generated gRPC stubs): the server of another revision, for a before/after."""
    if revision is None:
        yield ROOT
        return
    folder = Path(tempfile.mkdtemp(prefix="keyed-memory-rev-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
        for stub in (ROOT / "keyed_serving/serving/proto").glob("*_pb2*"):
            shutil.copy(stub, folder / "keyed_serving/serving/proto" / stub.name)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def sampled(server_cm: Any) -> Iterator[tuple[Server, Sampler]]:
    with server_cm as server:
        sampler = Sampler(server.process.pid)
        sampler.sample()
        try:
            yield server, sampler
        finally:
            sampler.stop()


@contextlib.contextmanager
def _closing(stack: contextlib.ExitStack, server: Any) -> Iterator[Server]:
    with stack, server as running:
        yield running


def table(profiles: list[Profile]) -> list[str]:
    lines = [
        "| server | process | " + " | ".join(PHASES) + " |",
        "|---|---|" + "---:|" * len(PHASES),
    ]
    for profile in profiles:
        roles = sorted({r for p in profile.phases.values() for r in p.by_role})
        for role in roles:
            cells = []
            for name in PHASES:
                peak = profile.phases.get(name, Phase()).by_role.get(role)
                cells.append(f"{peak.rss:.0f} / {peak.pss:.0f} / {peak.uss:.0f}" if peak else "")
            lines.append(f"| {profile.name} | {role} | " + " | ".join(cells) + " |")
        totals = []
        for name in PHASES:
            peak = profile.phases.get(name, Phase()).total
            totals.append(f"**{peak.rss:.0f}** / {peak.pss:.0f} / {peak.uss:.0f}")
        lines.append(f"| {profile.name} | **all (peak of the sum)** | " + " | ".join(totals) + " |")
    return lines


def rates(profiles: list[Profile]) -> list[str]:
    lines = ["| server | W1 inst/s | W2 inst/s | W3 inst/s | errors |", "|---|---:|---:|---:|---:|"]
    for profile in profiles:
        cells = [f"{profile.phases[w].rate or 0:,.0f}" for w in ("W1", "W2", "W3")]
        errors = sum(profile.phases[w].errors for w in ("W1", "W2", "W3"))
        lines.append(f"| {profile.name} | " + " | ".join(cells) + f" | {errors} |")
    return lines


def report(profiles: list[Profile], args: Any) -> str:
    out = [
        "# Memory per process: ours and MLServer's",
        "",
        "Written by `bench/memory_profile.py` (read its docstring for RSS, PSS and USS). Each",
        "cell: peak **RSS / PSS / USS** in MB of that process during the phase (idle after",
        f"start, {args.warmup:.0f} s warm-up + {args.seconds:.0f} s of each workload under wrk,",
        "idle after). The `all` row is the peak of the sum over the server's processes at one",
        "sample: its RSS is what the harness's peak RSS column measures.",
        "",
        *table(profiles),
        "",
        "Throughput in the same run (every answer checked key by key):",
        "",
        *rates(profiles),
        "",
        "Resident memory by what is mapped, per process, after the load (MB):",
        "",
    ]
    for profile in profiles:
        for role, sizes in profile.maps.items():
            listed = ", ".join(f"{name} {mb:.1f}" for name, mb in sizes)
            out.append(f"- {profile.name}, {role}: {listed}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VAR=VALUE[,VAR=VALUE]",
        help='our server once more with these environment settings, e.g. "arenas 2='
        'MALLOC_ARENA_MAX=2" (repeatable)',
    )
    parser.add_argument("--before", metavar="REVISION", help="ours at this git revision too")
    parser.add_argument("--no-default", action="store_true", help="skip ours as configured")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "memory_profile.md")
    args = parser.parse_args(argv)

    variants: list[tuple[str, str | None, dict[str, str]]] = []
    if args.before:
        variants.append((f"ours at {args.before}", args.before, {}))
    if not args.no_default:
        variants.append(("ours", None, {}))
    for given in args.variant:
        name, _, settings = given.partition("=")
        env = dict(item.split("=", 1) for item in settings.split(",") if item)
        variants.append((f"ours, {name}", None, env))
    profiles = []
    with bench_setup("keyed-memory") as setup:
        from support import free_port

        files = {
            load.name: write_workload(setup.work, load, setup.pipeline, seed=i)
            for i, load in enumerate(WORKLOADS)
            if load.name in ("W1", "W2", "W3")
        }

        def ours(revision: str | None, env: dict[str, str]) -> Any:
            stack = contextlib.ExitStack()
            code = stack.enter_context(checkout(revision))
            # as the harness runs it: with the gRPC endpoint on
            server = bentoml_server(
                "keyed",
                "service:KeyedPrediction",
                setup.home,
                setup.work,
                code=code,
                MODEL_TAG=str(setup.tag),
                KEYED_GRPC_PORT=str(free_port()),
                **env,
            )
            return _closing(stack, server)

        runs: list[tuple[str, Any, bool]] = [
            (name, lambda revision=revision, env=env: ours(revision, env), False)
            for name, revision, env in variants
        ]
        if not args.no_mlserver and (MLSERVER_VENV / "bin" / "mlserver").exists():
            runs.append(("MLServer 1.7.1", lambda: mlserver(setup.model_path, setup.work), True))
        for name, start, peer in runs:
            print(f"{name}:", flush=True)
            with sampled(start()) as (server, sampler):
                load_phases(server, sampler, files, args, setup.work, peer)
                profiles.append(Profile(name, sampler.phases, mappings(server.process.pid)))
    kept = args.out.read_text() if args.out.exists() else ""
    kept = kept[kept.index(FINDINGS) :] if FINDINGS in kept else ""
    args.out.write_text(report(profiles, args) + ("\n" + kept if kept else ""))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
