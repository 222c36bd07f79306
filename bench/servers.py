"""Starting and stopping the servers under test: `bentoml serve` processes and MLServer, each
with its peak memory sampled, in a BentoML home and work folder of the bench's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
MLSERVER_VENV = BENCH / ".venv-mlserver"


class PeakRss:
    """Samples the resident memory of a process and its children until stopped: the peak of
    the whole family and of each process (by role), since start or the last ``reset``."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak_total = 0.0
        self.peak_by_process: dict[int, tuple[str, float]] = {}  # pid -> (role, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.25):
            try:
                family = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0.0
            for process in family:
                try:
                    rss = process.memory_info().rss / 2**20
                    cmdline = " ".join(process.cmdline())
                except psutil.Error:
                    continue
                total += rss
                _, peak = self.peak_by_process.get(process.pid, ("", 0.0))
                self.peak_by_process[process.pid] = (_role(cmdline), max(peak, rss))
            self.peak_total = max(self.peak_total, total)

    @property
    def peak_by_role(self) -> dict[str, float]:
        """Each process's peak, named by role ("entry worker", "runner worker 2", ...)."""
        named: dict[str, float] = {}
        roles = [role for role, _ in self.peak_by_process.values()]
        seen: dict[str, int] = {}
        for pid in sorted(self.peak_by_process):
            role, peak = self.peak_by_process[pid]
            seen[role] = seen.get(role, 0) + 1
            named[role if roles.count(role) == 1 else f"{role} {seen[role]}"] = peak
        return named

    def reset(self) -> None:
        self.peak_total = 0.0
        self.peak_by_process = {}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _role(cmdline: str) -> str:
    if "--service-name ModelRunner" in cmdline:
        return "runner worker"
    if "_bentoml_impl.worker" in cmdline:
        return "entry worker"
    if "bentoml serve" in cmdline:
        return "bentoml serve (supervisor)"
    if "resource_tracker" in cmdline:
        return "multiprocessing resource tracker"
    if "multiprocessing" in cmdline and "mlserver" in cmdline:
        return "mlserver inference worker"
    if "mlserver start" in cmdline:
        return "mlserver (main: HTTP, gRPC)"
    return "other"


class HeldConnections:
    """The most TCP connections on ``port`` that the server's processes held open at once,
    and the longest its listening socket's accept queue grew, sampled every 0.5 s.
    Connections in the accept queue are established (the client has sent its request) but
    not yet accepted by the server: together they show whether a server really takes
    1,024 connections, and how many wait in the kernel before it sees them."""

    def __init__(self, server: Server) -> None:
        import psutil

        self.root = psutil.Process(server.process.pid)
        self.port = int(server.url.rsplit(":", 1)[1])
        self.peak = 0
        self.peak_queued = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> HeldConnections:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            held = 0
            try:
                family = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in family:
                with contextlib.suppress(psutil.Error):
                    held += sum(
                        1
                        for c in process.net_connections(kind="tcp")
                        if c.status == psutil.CONN_ESTABLISHED
                        and c.laddr
                        and c.laddr.port == self.port
                    )
            self.peak = max(self.peak, held)
            self.peak_queued = max(self.peak_queued, accept_queue(self.port) or 0)


def wait_until_drained(server: Server, timeout_s: float = 60.0) -> float:
    """Until the server holds no connection on its HTTP port (established or closed by the
    client with the answer still owed: CLOSE_WAIT) and its accept queue is empty, at most
    ``timeout_s``; returns the seconds waited. After a warm-up at 1,024 connections wrk has
    closed them all, but a server that queues still works through their requests: without
    this, the measured run would start behind that work for clients who are gone."""
    import psutil

    root = psutil.Process(server.process.pid)
    port = int(server.url.rsplit(":", 1)[1])
    busy = {psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT}
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        owed = accept_queue(port) or 0
        with contextlib.suppress(psutil.Error):
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    owed += sum(
                        1
                        for c in process.net_connections(kind="tcp")
                        if c.status in busy and c.laddr and c.laddr.port == port
                    )
        if owed == 0:
            break
        time.sleep(0.2)  # polling the server's sockets until it has caught up
    return time.monotonic() - started


def accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queue of the socket listening on ``port`` now
    (``ss``'s Recv-Q of a listening socket)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(out[1]) if len(out) > 1 and out[1].isdigit() else None


def raise_open_files_limit() -> int:
    """The soft limit on open files raised to the hard one, for this process and the wrk
    and servers it starts: 1,024 connections need more than the usual soft 1,024
    descriptors on both sides. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def listen_backlog(port: int) -> int | None:
    """The accept queue of the socket listening on ``port``, as the kernel holds it (the
    server's backlog, capped by net.core.somaxconn): ``ss`` shows it as Send-Q."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(out[2]) if len(out) > 2 and out[2].isdigit() else None


@dataclass
class Server:
    name: str
    url: str
    path: str
    process: subprocess.Popen[bytes]
    rss: PeakRss
    log: Path
    grpc_target: str | None = None  # host:port of its Open Inference Protocol over gRPC
    backlog: int | None = None  # its HTTP socket's accept queue (listen_backlog)


@contextlib.contextmanager
def bentoml_server(
    name: str, target: str, home: str, work: Path, code: Path = ROOT, **env: str
) -> Iterator[Server]:
    """``bentoml serve target`` of the code in ``code`` (this checkout unless said), in a
    session of its own."""
    from support import free_port, stop_server, wait_until_ready

    port = free_port()
    log = work / f"{name.replace(' ', '_').replace(',', '')}.log"
    process = subprocess.Popen(
        [
            # the bentoml of the Python running the bench (a worktree has no .venv of its own)
            str(Path(sys.executable).with_name("bentoml")),
            "serve",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=code,
        env={
            **os.environ,
            **({} if code == ROOT else {"PYTHONPATH": str(code)}),
            "BENTOML_HOME": home,
            "BENTOML_DO_NOT_TRACK": "True",
            **env,
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, timeout_s=180)
        server = Server(name, url, "/predict", process, PeakRss(process.pid), log)
        server.backlog = listen_backlog(port)
        if "KEYED_GRPC_PORT" in env:
            server.grpc_target = f"127.0.0.1:{env['KEYED_GRPC_PORT']}"
            wait_for_grpc(server.grpc_target, process)
        yield server
    finally:
        with contextlib.suppress(NameError):
            server.rss.stop()
        stop_server(process)


@dataclass(frozen=True)
class PeerSettings:
    """One way of running MLServer: its name in the tables, its server-wide settings and
    its model's settings (beside name, implementation and uri)."""

    name: str
    server: dict[str, Any]
    model: dict[str, Any]


# MLServer 1.7.1's own defaults (mlserver/settings.py): parallel_workers 1 (inference in one
# worker process beside the main one, which holds HTTP and gRPC), max_batch_size 0 and
# max_batch_time 0.0 (adaptive batching off), debug True (an access log line per request).
# Both settings below turn the access log off (debug False), as ours is off.
PEERS = {
    # Adaptive batching as MLServer documents it: up to 64 requests merged, waiting at most
    # 10 ms for them (the same order as our own bounds under W1); parallel_workers at its
    # default, written out.
    "mlserver": PeerSettings(
        "MLServer 1.7.1, batching 64 / 10 ms",
        {"parallel_workers": 1},
        {"max_batch_size": 64, "max_batch_time": 0.01},
    ),
    # MLServer as installed: nothing set but the access log.
    "mlserver-defaults": PeerSettings("MLServer 1.7.1, its defaults (no batching)", {}, {}),
    # What issue 18's "Why" measured: parallel_workers 1 with 5 ms adaptive batching (the
    # issue names no batch size: 64, as above). Not in the default run.
    "mlserver-5ms": PeerSettings(
        "MLServer 1.7.1, batching 64 / 5 ms",
        {"parallel_workers": 1},
        {"max_batch_size": 64, "max_batch_time": 0.005},
    ),
}
MODEL_SETTINGS_BASE = {
    "name": "iris",
    "implementation": "keyed_sklearn.KeyedSKLearnModel",
    "parameters": {"uri": "./model.joblib"},
}


@contextlib.contextmanager
def mlserver(
    model_path: Path, work: Path, peer: PeerSettings = PEERS["mlserver"]
) -> Iterator[Server]:
    from support import free_port, stop_server

    folder = work / ("mlserver-" + "".join(c if c.isalnum() else "-" for c in peer.name))
    model_dir = folder / "iris"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, model_dir / "model.joblib")
    shutil.copy(BENCH / "peers" / "keyed_sklearn.py", model_dir / "keyed_sklearn.py")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "debug": False,
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                **peer.server,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps({**MODEL_SETTINGS_BASE, **peer.model})
    )
    log = folder / "mlserver.log"
    process = subprocess.Popen(
        [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
        cwd=folder,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"mlserver exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                import urllib.request

                with urllib.request.urlopen(url + "/v2/models/iris/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            time.sleep(0.3)  # polling a server that is not up yet
        else:
            raise TimeoutError("mlserver not ready")
        server = Server(peer.name, url, "/v2/models/iris/infer", process, PeakRss(process.pid), log)
        server.backlog = listen_backlog(http_port)
        server.grpc_target = f"127.0.0.1:{grpc_port}"
        wait_for_grpc(server.grpc_target, process)
        yield server
    finally:
        with contextlib.suppress(NameError):
            server.rss.stop()
        stop_server(process)


def wait_for_grpc(target: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Until the server's gRPC endpoint answers ServerReady with ready."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited before its gRPC endpoint ({target}) was up")
            with contextlib.suppress(grpc.RpcError):
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2).ready:
                    return
            time.sleep(0.3)  # polling a server that is not up yet
    raise TimeoutError(f"gRPC endpoint {target} not ready")


@dataclass
class Setup:
    home: str
    work: Path
    tag: str
    model_path: Path
    pipeline: Any


@contextlib.contextmanager
def bench_home(prefix: str) -> Iterator[tuple[str, Path]]:
    """A BentoML home and a work folder of a bench script's own, removed afterwards."""
    raise_open_files_limit()
    home = tempfile.mkdtemp(prefix=f"{prefix}-home-")
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    os.environ["BENTOML_HOME"] = home
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    try:
        yield home, work
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def bench_setup(prefix: str) -> Iterator[Setup]:
    """``bench_home`` holding the default model, trained afresh: every bench script
    measures the same model."""
    with bench_home(prefix) as (home, work):
        import bentoml
        import joblib

        from keyed_serving.model.store import MODEL_FILE
        from keyed_serving.model.training import train_default

        tag = train_default().tag
        model_path = Path(bentoml.models.get(tag).path_of(MODEL_FILE))
        yield Setup(home, work, tag, model_path, joblib.load(model_path))
