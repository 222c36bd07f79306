"""The client against stand-in servers (httpx mock transport): splitting, retries,
Retry-After, servers that stop answering, answers that do not match, per-key failures."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pandas as pd
import pytest

from keyed_serving.client import InvalidKeys, KeyedClient, ScoringError

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
