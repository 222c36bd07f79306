"""The benchmark's unkeyed variant (bench/unkeyed_service.py), which bench/keys_ab.py
measures keys against: the keyed service with the keys taken out, and nothing else. Its
answers must be the keyed service's, by position and without keys, or the A/B would
compare two different amounts of work."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


@pytest.fixture(scope="module")
def services(default_model: str) -> tuple[Any, Any]:
    import service
    from bench import unkeyed_service

    return service.KeyedPrediction(), unkeyed_service.UnkeyedPrediction()


def _features(n: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{name: round(rng.uniform(0.1, 7.9), 1) for name in FEATURES} for _ in range(n)]


def _answer(entry: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = asyncio.run(entry.predict_raw(orjson.dumps(body)))
    return response.status_code, orjson.loads(response.body)


@pytest.mark.parametrize("n", [1, 300])
def test_rows_are_answered_as_the_keyed_service_answers_them_by_position(
    services: tuple[Any, Any], n: int
) -> None:
    keyed, unkeyed = services
    rows = _features(n, seed=n)
    keys = [f"k{i}" for i in range(n)]
    status, with_keys = _answer(
        keyed, {"instances": [{"key": k, "features": f} for k, f in zip(keys, rows, strict=True)]}
    )
    status_u, without = _answer(unkeyed, {"instances": [{"features": f} for f in rows]})
    assert status == status_u == 200
    assert [entry["key"] for entry in with_keys["predictions"]] == keys
    assert [{k: v for k, v in e.items() if k != "key"} for e in with_keys["predictions"]] == (
        without["predictions"]
    )
    assert (
        without["summary"] == with_keys["summary"] == {"received": n, "predicted": n, "failed": 0}
    )
    assert without["model"] == with_keys["model"]


def test_columns_are_answered_as_the_keyed_service_answers_them_without_the_keys(
    services: tuple[Any, Any],
) -> None:
    keyed, unkeyed = services
    rows = _features(250, seed=7)
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    status, with_keys = _answer(keyed, {"keys": list(range(250)), "columns": columns})
    status_u, without = _answer(unkeyed, {"columns": columns})
    assert status == status_u == 200
    assert without == {name: value for name, value in with_keys.items() if name != "keys"}


def test_a_bad_value_is_refused_by_both_alike(services: tuple[Any, Any]) -> None:
    """The variant validates every value as the keyed service does (rows named by position)."""
    keyed, unkeyed = services
    rows = _features(3, seed=3)
    rows[1]["petal_width_cm"] = "wide"  # type: ignore[assignment]
    status, refusal = _answer(
        keyed, {"instances": [{"key": i, "features": f} for i, f in enumerate(rows)]}
    )
    status_u, refusal_u = _answer(unkeyed, {"instances": [{"features": f} for f in rows]})
    assert status == status_u == 400
    assert [d["loc"] for d in refusal_u["detail"]] == [d["loc"] for d in refusal["detail"]]
    assert refusal_u["detail"][0]["loc"] == ["instances", 1, "features", "petal_width_cm"]


def test_the_variant_takes_no_keys(services: tuple[Any, Any]) -> None:
    """An instance with a key is malformed for the variant: it never parses or checks one."""
    _, unkeyed = services
    status, refusal = _answer(
        unkeyed, {"instances": [{"key": "a", "features": _features(1, seed=1)[0]}]}
    )
    assert status == 400 and refusal["detail"][0]["loc"] == ["instances", 0]


def test_the_keyed_service_never_takes_the_variants_positions(services: tuple[Any, Any]) -> None:
    """Row numbering is the variant's alone: keys given in-process as a range (not a list of
    keys) are refused by the keyed service, not taken as positions and left unchecked."""
    keyed, _ = services
    columns = {name: [1.0, 2.0, 3.0] for name in FEATURES}
    response = asyncio.run(keyed.predict(keys=range(3), columns=columns))
    assert response.status_code == 400
    assert orjson.loads(response.body)["detail"][0]["loc"] == ["keys"]
