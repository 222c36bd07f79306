"""Faults and hostile conditions against real `bentoml serve` processes."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
import httpx
import psutil
import pytest
from support import Server, make_customer_table, own_predictions, save_strict_copy

from keyed_serving.model.spec import ModelSpec

pytestmark = pytest.mark.slow
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture
def server(default_model: str) -> Iterator[Server]:
    running = Server(MODEL_TAG=default_model)
    yield running
    running.stop()


def flowers(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"key": i, "features": {f: round(rng.uniform(0.5, 7.5), 1) for f in FEATURES}}
        for i in range(n)
    ]


def check_answer(response: httpx.Response, instances: list[dict], expected: list[Any]) -> str:
    """'ok' for a right 200, 'retry' for an honest refusal; fails the test on anything else."""
    if response.status_code == 200:
        got = response.json()["predictions"]
        assert [(p["key"], p["prediction"]) for p in got] == [
            (i["key"], e) for i, e in zip(instances, expected, strict=True)
        ]
        return "ok"
    assert response.status_code in (429, 503), response.text
    assert "retry-after" in response.headers
    return "retry"


def test_killing_the_runner_under_load_loses_and_mispairs_nothing(
    server: Server, default_model: str
) -> None:
    requests = [flowers(random.Random(n).randint(1, 30), seed=n) for n in range(16)]
    expected = [own_predictions(default_model, r) for r in requests]
    outcomes: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            turn = number
            while not stop.is_set():
                instances = requests[turn % 16]
                try:
                    response = http.post("/predict", json={"instances": instances})
                    outcomes.append(check_answer(response, instances, expected[turn % 16]))
                except (AssertionError, httpx.HTTPError) as exc:
                    outcomes.append(f"wrong: {type(exc).__name__}: {exc}"[:300])
                turn += 1

    def wait_for(condition: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(condition())

    def new_runner() -> psutil.Process | None:
        try:
            runner = server.worker("ModelRunner")
        except LookupError:
            return None
        return runner if runner.pid != old_runner.pid else None

    old_runner = server.worker("ModelRunner")
    with ThreadPoolExecutor(16) as pool:
        for n in range(16):
            pool.submit(client, n)
        try:
            assert wait_for(lambda: len(outcomes) >= 200, 60), "no load before the kill"
            old_runner.kill()
            killed_at = len(outcomes)
            assert wait_for(new_runner, 60), "the runner was not started again"
            assert wait_for(lambda: len(outcomes) >= killed_at + 300, 90), "no load after"
        finally:
            stop.set()
    assert [o for o in outcomes if o.startswith("wrong")] == []
    # afterwards every request is served again
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for instances, want in zip(requests, expected, strict=True):
            response = http.post("/predict", json={"instances": instances})
            assert check_answer(response, instances, want) == "ok"


def test_sigterm_lets_a_request_in_flight_finish(server: Server, default_model: str) -> None:
    instances = flowers(40_000, seed=99)
    expected = own_predictions(default_model, instances)
    result: dict[str, Any] = {}

    def big_request() -> None:
        result["response"] = httpx.post(
            f"{server.url}/predict", json={"instances": instances}, timeout=60
        )

    caller = threading.Thread(target=big_request)
    caller.start()
    entry = server.worker("KeyedPrediction")
    deadline = time.monotonic() + 30
    # Signal once the entry has taken the body in and is working on it.
    while entry.cpu_percent(interval=0.05) < 20 and time.monotonic() < deadline:
        pass  # cpu_percent's interval is the wait
    server.process.send_signal(signal.SIGTERM)
    caller.join(timeout=60)
    assert check_answer(result["response"], instances, expected) == "ok"
    assert server.process.wait(timeout=40) is not None


def test_with_api_token_set_no_api_answers_without_it(default_model: str) -> None:
    token = "t0ken-" + "x" * 20
    running = Server(MODEL_TAG=default_model, API_TOKEN=token)
    try:
        body = {"instances": flowers(2, seed=1)}
        bare = httpx.post(f"{running.url}/predict", json=body)
        wrong = httpx.post(
            f"{running.url}/predict", json=body, headers={"authorization": "Bearer nope"}
        )
        info = httpx.get(f"{running.url}/model_info")
        docs = httpx.get(f"{running.url}/docs.json")
        assert [bare.status_code, wrong.status_code, info.status_code, docs.status_code] == [
            401,
            401,
            401,
            401,
        ]
        assert token not in bare.text + wrong.text
        good = httpx.post(
            f"{running.url}/predict", json=body, headers={"authorization": f"Bearer {token}"}
        )
        assert good.status_code == 200
        for probe in ("/livez", "/readyz", "/metrics"):
            assert httpx.get(running.url + probe).status_code == 200, probe
    finally:
        running.stop()


def test_the_runner_is_not_reachable_over_the_network(server: Server) -> None:
    runner = server.worker("ModelRunner")
    arguments = runner.cmdline()
    served_fd = int(arguments[arguments.index("--fd") + 1])  # the socket it serves HTTP on
    unix_fds = {c.fd for c in runner.net_connections(kind="unix")}
    inet_fds = {c.fd for c in runner.net_connections(kind="inet")}
    assert served_fd in unix_fds and served_fd not in inet_fds
    # Everything the server listens on (the entry, and the process manager's own control
    # sockets) is on loopback here, as asked for with --host 127.0.0.1.
    family = [
        psutil.Process(server.process.pid),
        *psutil.Process(server.process.pid).children(recursive=True),
    ]
    listening = {
        c.laddr.ip
        for p in family
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {"127.0.0.1"}


@pytest.fixture(scope="module")
def strict_model(customer_model: str) -> str:
    return save_strict_copy(customer_model, "customers_strict")


def test_poison_from_some_clients_fails_no_clean_request(strict_model: str) -> None:
    running = Server(MODEL_TAG=strict_model)
    try:
        table = make_customer_table(3000, seed=5)
        stored = bentoml.models.get(strict_model)
        spec = ModelSpec.from_metadata(strict_model, stored.info.metadata)
        names = [f.name for f in spec.features]
        clean_rows = [
            {
                "key": r["customer_id"],
                "features": {n: (None if r[n] != r[n] else r[n]) for n in names},
            }
            for r in table.to_dict("records")
        ]
        expected = dict(
            zip(table["customer_id"], own_predictions(strict_model, clean_rows), strict=True)
        )

        def client(seed: int) -> tuple[list[dict], set[str], httpx.Response]:
            rng = random.Random(seed)
            part = rng.sample(clean_rows, rng.randint(1, 60))
            poisoned = set()
            if seed % 3 == 0:  # a third of the clients send a row the model cannot take
                victim = rng.randrange(len(part))
                part[victim] = {
                    "key": part[victim]["key"],
                    "features": {**part[victim]["features"], "plan": "platinum"},
                }
                poisoned.add(part[victim]["key"])
            response = httpx.post(
                f"{running.url}/predict",
                timeout=60,
                json={"instances": part, "errors": "per_instance"},
            )
            return part, poisoned, response

        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(client, range(400)))
        for part, poisoned, response in outcomes:
            assert response.status_code == 200, response.text
            entries = response.json()["predictions"]
            assert [e["key"] for e in entries] == [i["key"] for i in part]
            for entry in entries:
                if entry["key"] in poisoned:
                    assert entry["error"]["code"] == "model_error"
                    assert "platinum" in entry["error"]["message"]
                else:
                    assert entry["prediction"] == expected[entry["key"]]
    finally:
        running.stop()
