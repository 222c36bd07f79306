"""Against a real `bentoml serve` (entry + runner processes, adaptive batching on)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
import httpx
import pandas as pd
import pytest
from support import SHARED, make_customer_table, own_predictions, served

from keyed_serving.model.store import load_spec

pytestmark = pytest.mark.slow


class Served:
    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag
        self.spec = load_spec(tag)
        self.http = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=64))

    def predict(self, instances: list[dict]) -> httpx.Response:
        return self.http.post("/predict", json={"instances": instances})

    def own_predictions(self, instances: list[dict]) -> list[Any]:
        return own_predictions(self.tag, instances)

    def micro_batches(self) -> tuple[float, float]:
        """(micro-batches so far, of which holding rows of a single chunk)."""
        text = self.http.get("/metrics").text
        samples = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line.startswith("keyed_micro_batch_chunks")
        }
        return samples["keyed_micro_batch_chunks_count"], samples[
            'keyed_micro_batch_chunks_bucket{le="1.0"}'
        ]


@pytest.fixture(scope="module")
def iris(default_model: str) -> Iterator[Served]:
    with served(MODEL_TAG=default_model) as url:
        yield Served(url, default_model)


@pytest.fixture(scope="module")
def customers(customer_model: str) -> Iterator[Served]:
    with served(MODEL_TAG=customer_model) as url:
        yield Served(url, customer_model)


def random_flower(rng: random.Random) -> dict[str, float]:
    return {
        "sepal_length_cm": round(rng.uniform(4, 8), 2),
        "sepal_width_cm": round(rng.uniform(2, 4.5), 2),
        "petal_length_cm": round(rng.uniform(1, 7), 2),
        "petal_width_cm": round(rng.uniform(0.1, 2.5), 2),
    }


def random_request(seed: int) -> list[dict]:
    rng = random.Random(seed)
    size = rng.choice([1, 1, 2, 3, 5, 8, 13, 40, 120])
    if seed % 2:  # half the clients number their rows 0..n-1, like everyone else
        keys: list[Any] = list(range(size))
    else:
        keys = [
            rng.choice([f"id-{rng.getrandbits(40):x}", rng.getrandbits(50)]) for _ in range(size)
        ]
        keys = list(dict.fromkeys(keys))
    return [{"key": key, "features": random_flower(rng)} for key in keys]


def test_the_shared_wire_contract_holds(iris: Served) -> None:
    script = SHARED / "contract_check.py"
    if not script.exists():
        pytest.skip(f"{script} is not beside this checkout")
    out = subprocess.run(
        [sys.executable, str(script), iris.url], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_bentomls_own_client_reads_both_apis(iris: Served) -> None:
    instances = random_request(4)
    with bentoml.SyncHTTPClient(iris.url) as client:
        info = client.model_info()
        answer = client.predict(instances=instances)
    assert [f["name"] for f in info["features"]] == [f.name for f in iris.spec.features]
    assert [p["key"] for p in answer["predictions"]] == [i["key"] for i in instances]


def test_concurrent_clients_each_get_exactly_their_keys_and_predictions(iris: Served) -> None:
    batches_before, single_before = iris.micro_batches()

    def client(seed: int) -> tuple[list[dict], httpx.Response]:
        instances = random_request(seed)
        return instances, iris.predict(instances)

    with ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(client, range(600)))
    for instances, response in outcomes:
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [p["key"] for p in got] == [i["key"] for i in instances]
        assert [type(p["key"]) for p in got] == [type(i["key"]) for i in instances]
        assert [p["prediction"] for p in got] == iris.own_predictions(instances)

    # Adaptive batching really merged requests: some micro-batch held rows of several.
    batches_after, single_after = iris.micro_batches()
    merged = (batches_after - batches_before) - (single_after - single_before)
    assert merged > 0, "no micro-batch held rows of more than one request"


def test_a_request_bigger_than_a_micro_batch_is_split_and_reassembled(iris: Served) -> None:
    rng = random.Random(5)
    instances = [{"key": f"row-{n}", "features": random_flower(rng)} for n in range(6000)]
    rng.shuffle(instances)
    response = iris.predict(instances)
    assert response.status_code == 200
    got = response.json()["predictions"]
    assert [p["key"] for p in got] == [i["key"] for i in instances]
    assert [p["prediction"] for p in got] == iris.own_predictions(instances)


def test_an_unseen_table_pairs_every_key_the_same_way_however_it_is_sent(
    customers: Served,
) -> None:
    table = make_customer_table(1200, seed=2026)
    feature_names = [f.name for f in customers.spec.features]
    instances = [
        {
            "key": row["customer_id"],
            "features": {n: (None if pd.isna(row[n]) else row[n]) for n in feature_names},
        }
        for row in table.to_dict("records")
    ]
    expected = dict(zip(table["customer_id"], customers.own_predictions(instances), strict=True))

    whole = customers.predict(instances)
    assert whole.status_code == 200
    one_request = {p["key"]: p["prediction"] for p in whole.json()["predictions"]}

    with ThreadPoolExecutor(64) as pool:
        singles = list(pool.map(lambda i: customers.predict([i]), instances))
    assert all(r.status_code == 200 for r in singles)
    one_by_one = {
        r.json()["predictions"][0]["key"]: r.json()["predictions"][0]["prediction"] for r in singles
    }
    assert [r.json()["predictions"][0]["key"] for r in singles] == list(table["customer_id"])

    rng = random.Random(11)
    cuts, start = [], 0
    while start < len(instances):
        size = rng.randint(1, 150)
        cuts.append(instances[start : start + size])
        start += size
    with ThreadPoolExecutor(24) as pool:
        chunked = list(pool.map(customers.predict, cuts))
    mixed: dict[str, Any] = {}
    for part, response in zip(cuts, chunked, strict=True):
        assert response.status_code == 200
        assert [p["key"] for p in response.json()["predictions"]] == [i["key"] for i in part]
        mixed.update({p["key"]: p["prediction"] for p in response.json()["predictions"]})

    assert one_request == one_by_one == mixed == expected
    assert len(expected) == 1200
