"""The client against stand-in servers (httpx mock transport): splitting, retries,
Retry-After, servers that stop answering, answers that do not match, per-key failures."""

from __future__ import annotations

import asyncio
import decimal
import json
import math
import socket
import time
from collections import Counter
from typing import Any

import httpx
import pandas as pd
import pytest

from keyed_serving.client.keyed_client import InvalidKeys, KeyedClient, ScoringError, ScoringStopped

INFO = {
    "model": "m:1",
    "task": "classification",
    "target": "y",
    "features": [{"name": "x", "type": "number"}, {"name": "colour", "type": "category"}],
    "classes": ["no", "yes"],
    "holdout_score": {"metric": "accuracy", "value": 1.0},
    "max_instances": 1000,
}


def label(features: dict[str, Any]) -> str:
    return "yes" if (features["x"] or 0) > 5 else "no"


class Fleet:
    """Stand-in servers by host name, each with a behaviour, all recording what they saw."""

    def __init__(self, **behaviours: str) -> None:
        self.behaviours = behaviours
        self.calls: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {h: [] for h in behaviours}

    def handle(self, request: httpx.Request) -> httpx.Response:
        host, behaviour = request.url.host, self.behaviours[request.url.host]
        if request.url.path == "/model_info":
            if behaviour == "down":
                raise httpx.ConnectError("refused")
            return httpx.Response(200, json=INFO)
        self.calls[host] += 1
        self.times[host].append(time.monotonic())
        if behaviour == "down":
            raise httpx.ConnectError("refused")
        if behaviour == "busy-once" and self.calls[host] == 1:
            return httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": "0.3"})
        body = json.loads(request.content)
        if behaviour == "small" and len(request.content) > 2000:
            return httpx.Response(413, json={"error": "too large"})
        # The client sends the columnar format, answered in kind.
        keys, columns = body["keys"], body["columns"]
        self.rows[host] += len(keys)
        rows = [{name: columns[name][i] for name in columns} for i in range(len(keys))]
        predictions: list[Any] = []
        errors = []
        for key, features in zip(keys, rows, strict=True):
            if features["colour"] == "poison":
                predictions.append(None)
                errors.append(
                    {"key": key, "error": {"code": "model_error", "message": "cannot take poison"}}
                )
            else:
                predictions.append(label(features))
        if behaviour == "liar":  # answers somebody else's rows: never to be accepted
            keys = keys[1:] + keys[:1]
        probabilities = {
            c: [None if p is None else float(p == c) for p in predictions] for c in ("no", "yes")
        }
        answer = {
            "model": "m:1",
            "keys": keys,
            "predictions": predictions,
            "probabilities": probabilities,
            "errors": errors,
            "summary": {},
        }
        return httpx.Response(200, json=answer)

    def client(self, **options: Any) -> KeyedClient:
        return KeyedClient(
            [f"http://{h}" for h in self.behaviours],
            transport=httpx.MockTransport(self.handle),
            **options,
        )


def table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(n)],
            "x": [float(i % 11) if i % 7 else None for i in range(n)],
            "colour": [["red", "blue", None][i % 3] for i in range(n)],
            "region": [f"r{i % 3}" for i in range(n)],
        }
    )


def test_scoring_spreads_over_servers_and_keeps_input_order() -> None:
    fleet = Fleet(a="ok", b="ok")
    frame = table(2500).sample(frac=1, random_state=1).reset_index(drop=True)
    scored = fleet.client(chunk_rows=100, concurrency=4).score(frame, "id", keep=["region"])
    assert scored["id"].tolist() == frame["id"].tolist()
    assert scored["region"].tolist() == frame["region"].tolist()
    expected = [label({"x": None if pd.isna(x) else x}) for x in frame["x"]]
    assert scored["prediction"].tolist() == expected
    assert (scored["probability_yes"] + scored["probability_no"] == 1).all()
    assert fleet.rows["a"] > 0 and fleet.rows["b"] > 0
    assert fleet.rows["a"] + fleet.rows["b"] == 2500


def test_a_server_that_stops_answering_loses_its_work_to_the_others() -> None:
    fleet = Fleet(a="ok", b="down")
    scored = fleet.client(chunk_rows=50, concurrency=4).score(table(1000), "id")
    assert len(scored) == 1000 and scored["id"].is_unique
    assert fleet.rows["a"] == 1000 and fleet.calls["b"] >= 1


def test_a_server_answering_other_keys_is_never_believed() -> None:
    fleet = Fleet(a="ok", b="liar")
    scored = fleet.client(chunk_rows=20, concurrency=2).score(table(400), "id")
    assert scored["prediction"].tolist() == [
        label({"x": None if pd.isna(x) else x}) for x in table(400)["x"]
    ]


def test_retry_after_is_honoured() -> None:
    fleet = Fleet(a="busy-once")
    fleet.client(chunk_rows=100, concurrency=1).score(table(100), "id")
    first, second = fleet.times["a"][:2]
    assert second - first >= 0.3


def test_a_body_the_server_finds_too_large_is_split() -> None:
    fleet = Fleet(a="small")
    scored = fleet.client(chunk_rows=500, concurrency=2).score(table(300), "id")
    assert len(scored) == 300 and fleet.rows["a"] == 300


def test_only_the_keys_that_failed_are_reported_and_the_rest_is_kept() -> None:
    fleet = Fleet(a="ok")
    frame = table(50)
    frame.loc[[3, 17], "colour"] = "poison"
    with pytest.raises(ScoringError) as caught:
        fleet.client(chunk_rows=10).score(frame, "id")
    assert set(caught.value.failed) == {"row-3", "row-17"}
    assert "cannot take poison" in caught.value.failed["row-3"]
    assert len(caught.value.partial) == 48
    assert fleet.rows["a"] == 50  # failed keys were not sent again: their reason is final


def test_keys_that_cannot_be_used_are_refused_before_anything_is_sent() -> None:
    fleet = Fleet(a="ok")
    duplicated = table(10)
    duplicated.loc[5, "id"] = "row-1"
    with pytest.raises(InvalidKeys, match="row-1"):
        fleet.client().score(duplicated, "id")
    empty = table(10)
    empty.loc[2, "id"] = None
    with pytest.raises(InvalidKeys, match="rows \\[2\\]"):
        fleet.client().score(empty, "id")
    assert fleet.calls == Counter()


def test_every_server_down_ends_in_an_error_listing_every_key_not_a_hang() -> None:
    fleet = Fleet(a="down")
    client = KeyedClient(["http://a"], transport=httpx.MockTransport(fleet.handle), max_attempts=2)
    client._info = INFO  # /model_info is down too; the scoring path is what is tested
    with pytest.raises(ScoringError) as caught:
        client.score(table(30), "id")
    assert len(caught.value.failed) == 30
    assert all("gave up after 2 attempts" in r for r in caught.value.failed.values())


def run_bounded(client: KeyedClient, frame: pd.DataFrame, key: Any, bound_s: float = 30) -> Any:
    """The client's own run, under a bound: a hang fails the test instead of stalling it."""

    async def bounded() -> Any:
        return await asyncio.wait_for(client.ascore(frame, key), bound_s)

    return asyncio.run(bounded())


def test_decimal_numbers_are_scored_as_the_numbers_they_are() -> None:
    fleet = Fleet(a="ok")
    frame = table(40)
    frame["x"] = [None if pd.isna(x) else decimal.Decimal(str(x)) for x in frame["x"]]
    scored, failed = run_bounded(fleet.client(chunk_rows=10), frame, "id")
    assert failed == {}
    assert scored["prediction"].tolist() == [label({"x": x}) for x in table(40)["x"]]


def test_an_unexpected_error_in_a_worker_stops_the_run_keeping_what_was_scored() -> None:
    fleet = Fleet(a="ok")
    frame = table(60).astype({"colour": object})
    frame.loc[35, "colour"] = b"bytes"  # a value the client cannot write as JSON
    with pytest.raises(ScoringStopped, match="TypeError") as caught:
        run_bounded(fleet.client(chunk_rows=10, concurrency=1), frame, "id")
    assert caught.value.partial["id"].tolist() == [f"row-{i}" for i in range(30)]


def test_a_server_that_never_finishes_its_answer_is_given_up_on_not_waited_for() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()  # no httpx timeout reaches a stalled transport
        raise AssertionError

    client = KeyedClient(
        ["http://a"], transport=httpx.MockTransport(never), timeout_s=0.2, max_attempts=2
    )
    client._info = INFO
    scored, failed = run_bounded(client, table(20), "id")
    assert len(scored) == 0 and len(failed) == 20
    assert all("gave up after 2 attempts" in reason for reason in failed.values())


def test_a_server_that_accepts_and_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = KeyedClient([url], timeout_s=0.3, max_attempts=1)
        with pytest.raises(ConnectionError, match="Timeout"):
            client.model_info()
        client._info = INFO
        _, failed = run_bounded(client, table(5), "id")
    assert len(failed) == 5 and "Timeout" in failed["row-0"]


def test_a_key_longer_than_256_characters_is_refused_before_anything_is_sent() -> None:
    fleet = Fleet(a="ok")
    frame = table(10)
    frame.loc[4, "id"] = "k" * 257
    with pytest.raises(InvalidKeys, match=r"rows \[4\]: string of 257 characters"):
        fleet.client().score(frame, "id")
    assert fleet.calls == Counter()


def test_a_key_of_several_columns_comes_back_whole_in_its_own_columns() -> None:
    fleet = Fleet(a="ok")
    frame = table(30)
    frame["customer"] = [i // 3 for i in range(30)]  # repeats: unique only with the region
    frame["region"] = [f"r{i % 3}" for i in range(30)]
    scored = fleet.client(chunk_rows=7).score(frame, key=["region", "customer"], keep=["id"])
    assert scored.columns.tolist()[:3] == ["region", "customer", "prediction"]
    assert scored[["region", "customer", "id"]].values.tolist() == (
        frame[["region", "customer", "id"]].values.tolist()
    )
    frame.loc[5, "id"] = "poison-row"
    frame.loc[5, "colour"] = "poison"
    with pytest.raises(ScoringError) as caught:
        fleet.client().score(frame, key=["region", "customer"])
    assert list(caught.value.failed) == [("r2", 1)]
    twice = frame.assign(customer=0)
    with pytest.raises(InvalidKeys, match="duplicated"):
        fleet.client().score(twice, key=["region", "customer"])


def test_a_table_without_a_key_column_is_keyed_by_its_rows() -> None:
    fleet = Fleet(a="ok")
    frame = table(25).drop(columns=["id"])
    scored = fleet.client(chunk_rows=10).score(frame, key="@row", keep=["region"])
    assert scored["row"].tolist() == list(range(25))
    assert scored["region"].tolist() == frame["region"].tolist()


def test_a_retry_after_of_a_day_is_capped_not_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("keyed_serving.client.keyed_client.MAX_PAUSE_S", 0.2)  # a day, in test time
    calls = Counter[str]()

    def handle(request: httpx.Request) -> httpx.Response:
        calls["predict"] += 1
        if calls["predict"] == 1:
            return httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": "86400"})
        return Fleet(a="ok").handle(request)

    client = KeyedClient(["http://a"], transport=httpx.MockTransport(handle))
    client._info = INFO
    scored, failed = run_bounded(client, table(10), "id")
    assert failed == {} and len(scored) == 10 and calls["predict"] == 2


def test_an_infinite_number_reaches_the_server_as_infinity_not_as_a_missing_value() -> None:
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))  # Python's JSON reads Infinity back
        return Fleet(a="ok").handle(request)

    client = KeyedClient(["http://a"], transport=httpx.MockTransport(handle), chunk_rows=10)
    client._info = INFO
    frame = table(30)
    frame.loc[[13, 24], "x"] = [math.inf, -math.inf]
    run_bounded(client, frame, "id")
    sent = {
        key: x for body in bodies for key, x in zip(body["keys"], body["columns"]["x"], strict=True)
    }
    assert sent["row-13"] == math.inf and sent["row-24"] == -math.inf
    assert sent["row-0"] is None and sent["row-1"] == 1.0  # NaN is missing, numbers are kept


def test_the_instances_api_answers_one_entry_per_instance_in_order() -> None:
    fleet = Fleet(a="ok")
    instances = [
        {"key": i, "features": {"x": float(i), "colour": "poison" if i == 4 else "red"}}
        for i in range(9)
    ]
    with pytest.raises(ScoringError) as caught:
        fleet.client(chunk_rows=2).predict(instances)
    assert caught.value.failed == {4: "model_error: cannot take poison"}
    assert caught.value.partial == [
        {
            "key": i,
            "prediction": label(instance["features"]),
            "probabilities": {
                "no": float(label(instance["features"]) == "no"),
                "yes": float(label(instance["features"]) == "yes"),
            },
        }
        for i, instance in enumerate(instances)
        if i != 4
    ]
    assert fleet.client().predict(instances[:3])[2]["key"] == 2


def test_an_answer_whose_keys_differ_only_in_type_is_not_believed() -> None:
    calls = Counter[str]()

    def handle(request: httpx.Request) -> httpx.Response:
        calls["predict"] += 1
        answer = json.loads(Fleet(a="ok").handle(request).content)
        if calls["predict"] == 1:
            answer["keys"] = [float(k) for k in answer["keys"]]  # 1.0 == 1, but another key
        return httpx.Response(200, json=answer)

    client = KeyedClient(["http://a"], transport=httpx.MockTransport(handle))
    client._info = INFO
    frame = table(5).assign(id=range(5))
    scored, failed = run_bounded(client, frame, "id")
    assert failed == {} and scored["id"].tolist() == list(range(5)) and calls["predict"] == 2
