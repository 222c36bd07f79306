"""The entry and runner services in-process, with the runner replaced where a test needs a
runner that merges, drops, repeats, swaps or fails rows on purpose."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from bentoml.exceptions import InternalServerError, ServiceUnavailable
from prometheus_client import REGISTRY

from keyed_serving.keys import KeyColumn
from keyed_serving.schemas import BlockResult, KeyedBlock
from keyed_serving.settings import get_settings

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
Blocks = list[KeyedBlock]


@pytest.fixture(scope="module")
def service(default_model: str) -> Any:
    import service

    return service


@pytest.fixture
def entry(service: Any) -> Any:
    return service.KeyedPrediction()


@pytest.fixture(scope="module")
def model(service: Any) -> Any:
    return service.ModelRunner().model


def flowers(n: int, seed: int, keys: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    keys = list(range(n)) if keys is None else keys
    return [
        {
            "key": key,
            "features": {
                "sepal_length_cm": round(rng.uniform(4.3, 7.9), 1),
                "sepal_width_cm": round(rng.uniform(2.0, 4.4), 1),
                "petal_length_cm": round(rng.uniform(1.0, 6.9), 1),
                "petal_width_cm": round(rng.uniform(0.1, 2.5), 1),
            },
        }
        for key in keys
    ]


def own_predictions(model: Any, instances: list[dict[str, Any]]) -> list[Any]:
    import pandas as pd

    frame = pd.DataFrame([i["features"] for i in instances], columns=FEATURES)
    return [p.item() if hasattr(p, "item") else p for p in model.pipeline.predict(frame)]


def answered(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.body[:300]
    return orjson.loads(response.body)


def runner(predict: Callable[[Blocks], Any]) -> Any:
    """Stands in for the proxy `bentoml.depends` gives the entry: `.to_async.predict(blocks)`."""
    return SimpleNamespace(to_async=SimpleNamespace(predict=predict))


class MicroBatchingRunner:
    """Predicts each call's blocks as one micro-batch with the real model and hands the
    results back by position, as BentoML's dispatcher does. `mangle` changes the
    micro-batch's results first, as a faulty batch function would."""

    def __init__(
        self, model: Any, mangle: Callable[[list[BlockResult]], list[BlockResult]] = lambda r: r
    ):
        self.model, self.mangle = model, mangle
        self.calls: list[list[int]] = []  # rows per block, per call

    async def predict(self, blocks: Blocks) -> list[BlockResult]:
        self.calls.append([len(block.keys) for block in blocks])
        await asyncio.sleep(0)
        return self.mangle(self.model.predict_blocks(blocks))


def always_raising(error: Exception) -> tuple[Callable[[Blocks], Any], list[int]]:
    """A runner call that always fails with `error`, and the list of its attempts' sizes."""
    attempts: list[int] = []

    async def predict(blocks: Blocks) -> list[BlockResult]:
        attempts.append(sum(len(block.keys) for block in blocks))
        raise error

    return predict, attempts


def mismatches() -> float:
    return REGISTRY.get_sample_value("keyed_key_mismatches_total") or 0.0


async def predict_all(entry: Any, requests: list[list[dict[str, Any]]], **extra: Any) -> list:
    return await asyncio.gather(*(entry.predict(instances=r, **extra) for r in requests))


def columns_of(instances: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "keys": [i["key"] for i in instances],
        "columns": {f: [i["features"].get(f) for i in instances] for f in FEATURES},
    }


def test_predictions_come_back_in_request_order_with_their_keys(entry: Any, model: Any) -> None:
    keys = [f"k{i}" for i in random.Random(2).sample(range(99), 40)]
    instances = flowers(40, seed=1, keys=keys)
    answer = answered(asyncio.run(entry.predict(instances=instances)))
    assert answer["model"] == entry.spec.tag
    assert [p["key"] for p in answer["predictions"]] == keys
    assert [p["prediction"] for p in answer["predictions"]] == own_predictions(model, instances)
    for p in answer["predictions"]:
        assert set(p["probabilities"]) == {"setosa", "versicolor", "virginica"}
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-9
    assert answer["summary"] == {"received": 40, "predicted": 40, "failed": 0}


def test_a_columnar_request_is_answered_in_columns_with_the_same_predictions(
    entry: Any, model: Any
) -> None:
    instances = flowers(30, seed=11, keys=[f"c{i}" for i in range(29)] + [7])
    rows = answered(asyncio.run(entry.predict(instances=instances)))
    columns = answered(asyncio.run(entry.predict(**columns_of(instances))))
    assert columns["keys"] == [i["key"] for i in instances]
    assert [type(k) for k in columns["keys"]] == [type(i["key"]) for i in instances]
    assert columns["predictions"] == [p["prediction"] for p in rows["predictions"]]
    for label, column in columns["probabilities"].items():
        assert column == [p["probabilities"][label] for p in rows["predictions"]]
    assert columns["errors"] == [] and columns["summary"]["predicted"] == 30


@pytest.mark.parametrize("count", [12, 300])
def test_string_keys_that_json_escapes_come_back_as_sent_in_columns(entry: Any, count: int) -> None:
    """A columnar answer writes string keys as their key checks wrote them as JSON; keys
    that JSON escapes come back as sent, at both sides of the packing's size switch."""
    odd = ['q"uote', "back\\slash", "nul\x00in", "tab\t", "\x1f", "é", "字", "🙂", "</script>"]
    keys = odd + [f"k{i}" for i in range(count - len(odd))]
    answer = answered(asyncio.run(entry.predict(**columns_of(flowers(count, 5, keys)))))
    assert answer["keys"] == keys
    assert answer["summary"] == {"received": count, "predicted": count, "failed": 0}


def test_the_decoded_body_is_freed_after_its_answer_is_sent(entry: Any) -> None:
    """Freeing 10,000 rows' Python objects took 0.15 ms before the answer left; the answer
    now holds them, and Starlette drops them once it has sent the answer."""
    raw = orjson.dumps(columns_of(flowers(30, seed=8)))
    response = asyncio.run(entry.predict_raw(raw))
    answered(response)
    assert response.background is not None
    assert response.background.args == (orjson.loads(raw),)
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http", "method": "POST"}, receive, send))
    assert sent == ["http.response.start", "http.response.body"]


def test_a_large_request_is_cut_into_blocks_and_reassembled(entry: Any, model: Any) -> None:
    settings = get_settings()
    batching = MicroBatchingRunner(model)
    entry.runner = runner(batching.predict)
    instances = flowers(2 * settings.chunk_rows + 37, seed=3)
    answer = answered(asyncio.run(entry.predict(**columns_of(instances))))
    blocks = sorted(rows for call in batching.calls for rows in call)
    assert blocks == sorted([settings.chunk_rows, settings.chunk_rows, 37])
    assert all(sum(call) <= max(settings.coalesce_rows, max(call)) for call in batching.calls)
    assert answer["keys"] == [i["key"] for i in instances]
    assert answer["predictions"] == own_predictions(model, instances)


def test_concurrent_requests_share_one_runner_call_and_keep_their_own_keys(
    entry: Any, model: Any
) -> None:
    # Everyone numbers their rows 0..n-1: one micro-batch holds key 0 three times.
    batching = MicroBatchingRunner(model)
    entry.runner = runner(batching.predict)
    requests = [flowers(n, seed=10 + n) for n in (5, 9, 7)]
    answers = asyncio.run(predict_all(entry, requests))
    assert batching.calls == [[5, 9, 7]]  # coalesced by the entry: one call, three blocks
    for instances, response in zip(requests, answers, strict=True):
        answer = answered(response)
        assert [p["key"] for p in answer["predictions"]] == list(range(len(instances)))
        assert [p["prediction"] for p in answer["predictions"]] == own_predictions(model, instances)


def drop_last_row(results: list[BlockResult]) -> list[BlockResult]:
    first = results[0]
    results[0] = BlockResult(
        chunk=first.chunk,
        model=first.model,
        keys=first.keys[:-1],
        predictions=first.predictions[:-1],
        probabilities=first.probabilities[:-1],
    )
    return results


def repeat_a_key(results: list[BlockResult]) -> list[BlockResult]:
    keys = results[0].keys.tolist()
    keys[-1] = keys[0]
    results[0] = results[0].model_copy(update={"keys": KeyColumn.pack(keys)})
    return results


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(drop_last_row, id="one-row-too-few"),
        pytest.param(repeat_a_key, id="a-key-repeated"),
        # The two requests' blocks change places: same keys 0..5, same lengths.
        pytest.param(lambda out: out[::-1], id="requests-swapped"),
        pytest.param(lambda out: out[:1], id="a-block-result-missing"),
    ],
)
def test_a_runner_that_mispairs_rows_gets_500_never_a_wrong_200(
    entry: Any, model: Any, fault: Callable
) -> None:
    entry.runner = runner(MicroBatchingRunner(model, mangle=fault).predict)
    before = mismatches()
    answers = asyncio.run(predict_all(entry, [flowers(6, seed=1), flowers(6, seed=2)]))
    faulted = [a for a in answers if a.status_code == 500]
    assert faulted and all(a.status_code in (200, 500) for a in answers)
    assert all(b"did not match the keys" in a.body for a in faulted)
    assert mismatches() - before == len(faulted)
    if fault in (drop_last_row, repeat_a_key):
        assert [a.status_code for a in answers] == [500, 200]  # the other block was intact
    else:
        assert len(faulted) == 2


def test_rows_reordered_inside_a_block_still_pair_by_key(entry: Any, model: Any) -> None:
    # Results carry their keys, so an order change alone is harmless: answered in request order.
    def reverse_rows(results: list[BlockResult]) -> list[BlockResult]:
        return [
            r.model_copy(
                update={
                    "keys": r.keys[::-1],
                    "predictions": r.predictions[::-1],
                    "probabilities": r.probabilities[::-1],
                }
            )
            for r in results
        ]

    entry.runner = runner(MicroBatchingRunner(model, mangle=reverse_rows).predict)
    instances = flowers(6, seed=1)
    answer = answered(asyncio.run(entry.predict(instances=instances)))
    assert [p["key"] for p in answer["predictions"]] == list(range(6))
    assert [p["prediction"] for p in answer["predictions"]] == own_predictions(model, instances)


def test_transient_runner_failures_are_retried(entry: Any, model: Any) -> None:
    failures = [
        ServiceUnavailable("process is overloaded"),
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError(),
    ]

    async def flaky(blocks: Blocks) -> list[BlockResult]:
        if failures:
            raise failures.pop()
        return model.predict_blocks(blocks)

    entry.runner = runner(flaky)
    answer = answered(asyncio.run(entry.predict(instances=flowers(3, seed=4))))
    assert failures == [] and [p["key"] for p in answer["predictions"]] == [0, 1, 2]


def test_a_failed_shared_call_is_retried_by_each_of_its_requests(entry: Any, model: Any) -> None:
    calls: list[int] = []

    async def fails_once(blocks: Blocks) -> list[BlockResult]:
        calls.append(len(blocks))
        if len(calls) == 1:
            raise aiohttp.ServerDisconnectedError()
        return model.predict_blocks(blocks)

    entry.runner = runner(fails_once)
    requests = [flowers(4, seed=50 + n) for n in range(3)]
    answers = [answered(a) for a in asyncio.run(predict_all(entry, requests))]
    assert calls[0] == 3 and sum(calls[1:]) == 3  # the three blocks, sent again
    for instances, answer in zip(requests, answers, strict=True):
        assert [p["prediction"] for p in answer["predictions"]] == own_predictions(model, instances)


def test_a_runner_that_stays_overloaded_gets_503_with_retry_after(
    entry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    monkeypatch.setattr(
        service,
        "settings",
        get_settings().model_copy(update={"request_deadline_s": 0.3, "retry_max_backoff_s": 0.05}),
    )
    overloaded, attempts = always_raising(ServiceUnavailable("process is overloaded"))
    entry.runner = runner(overloaded)
    answer = asyncio.run(entry.predict(instances=flowers(3, seed=5)))
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == str(get_settings().retry_after_s)
    assert len(attempts) > 1


def test_a_runner_that_hangs_gets_503_at_the_deadline(
    entry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    monkeypatch.setattr(
        service, "settings", get_settings().model_copy(update={"request_deadline_s": 0.2})
    )

    async def hangs(blocks: Blocks) -> list[BlockResult]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    entry.runner = runner(hangs)
    answer = asyncio.run(entry.predict(instances=flowers(2, seed=6)))
    assert answer.status_code == 503 and "Retry-After" in answer.headers


def test_a_deterministic_runner_error_is_not_retried(entry: Any) -> None:
    broken, attempts = always_raising(InternalServerError("model raised"))
    entry.runner = runner(broken)
    with pytest.raises(InternalServerError):
        asyncio.run(entry.predict(instances=flowers(2, seed=7)))
    assert len(attempts) == 1


def test_bad_input_is_rejected_before_anything_is_predicted(entry: Any) -> None:
    called = False

    async def must_not_run(blocks: Blocks) -> list[BlockResult]:
        nonlocal called
        called = True
        return []

    entry.runner = runner(must_not_run)
    instances = flowers(3, seed=8)
    instances[2] = {"key": "bad", "features": {"sepal_length_cm": 1.0}}
    answer = asyncio.run(entry.predict(instances=instances))
    assert answer.status_code == 400 and not called
    assert b"'bad'" in answer.body and b"sepal_width_cm" in answer.body


def test_model_info_says_what_a_request_needs(entry: Any) -> None:
    info = entry.model_info()
    assert info.model == entry.spec.tag
    assert [f.name for f in info.features] == FEATURES
    assert all(f.type == "number" for f in info.features)
    assert info.classes == ["setosa", "versicolor", "virginica"]
    assert info.max_instances == get_settings().max_instances


def block(
    chunk: str, keys: list[Any], instances: list[dict[str, Any]], model: str | None = None
) -> KeyedBlock:
    """A block as the entry sends it, for the served model version unless ``model``."""
    import service

    return KeyedBlock(
        chunk=chunk,
        model=service.MODEL_TAG if model is None else model,
        keys=np.array(keys, dtype=object),
        columns=[np.array([i["features"][f] for i in instances]) for f in FEATURES],
    )


def test_the_runner_predicts_a_micro_batch_of_keyed_blocks_and_counts_it(service: Any) -> None:
    runner_service = service.ModelRunner()
    instances = flowers(5, seed=9)
    blocks = [block("c0", [0, 1, 2], instances[:3]), block("c1", [0, 1], instances[3:])]
    batches_before = REGISTRY.get_sample_value("keyed_micro_batch_rows_count") or 0.0
    results = asyncio.run(runner_service.predict(blocks))
    assert [(r.chunk, r.keys.tolist()) for r in results] == [("c0", [0, 1, 2]), ("c1", [0, 1])]
    predictions = [p for r in results for p in r.predictions.tolist()]
    assert predictions == own_predictions(runner_service.model, instances)
    assert REGISTRY.get_sample_value("keyed_micro_batch_rows_count") == batches_before + 1
    assert REGISTRY.get_sample_value("keyed_micro_batch_chunks_sum") is not None


def test_predictions_taken_from_probabilities_equal_the_models_own_predict(model: Any) -> None:
    # The forest's predict is the class of largest probability: one pass gives both.
    assert model.derive_predictions
    instances = flowers(500, seed=12)
    rng = np.random.default_rng(0)
    for instance in instances[::3]:  # ties and odd values too
        instance["features"]["petal_width_cm"] = float(rng.choice([0.8, 1.75, 1.65]))
    columns = {f: [i["features"][f] for i in instances] for f in FEATURES}
    assert model.predict_columns(columns).predictions.tolist() == own_predictions(model, instances)


class PoisonedPipeline:
    """The real pipeline, except that it raises on any frame holding a sepal length of 666,
    as a model raises on a value or category it cannot take."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.classes_ = pipeline.classes_
        self.steps = pipeline.steps
        self.calls = 0

    def _check(self, frame: Any) -> None:
        self.calls += 1
        if (frame["sepal_length_cm"] == 666).any():
            raise ValueError("Input contains a value the model cannot take")

    def predict(self, frame: Any) -> Any:
        self._check(frame)
        return self.pipeline.predict(frame)

    def predict_proba(self, frame: Any) -> Any:
        self._check(frame)
        return self.pipeline.predict_proba(frame)


@pytest.fixture
def poisoned_model(model: Any) -> Any:
    from keyed_serving.model.predicting import LoadedModel

    return LoadedModel(model.spec, PoisonedPipeline(model.pipeline))


def poison(instances: list[dict[str, Any]], *positions: int) -> list[dict[str, Any]]:
    for position in positions:
        instances[position]["features"]["sepal_length_cm"] = 666
    return instances


def test_bisection_isolates_the_rows_the_model_raises_on(poisoned_model: Any, model: Any) -> None:
    instances = poison(flowers(64, seed=20), 5, 40)
    [result] = poisoned_model.predict_blocks([block("c", list(range(64)), instances)])
    assert result.keys.tolist() == list(range(64))
    assert sorted(e.row for e in result.errors) == [5, 40]
    assert all(
        e.error.code == "model_error" and "Traceback" not in e.error.message for e in result.errors
    )
    assert [result.predictions[i] for i in (5, 40)] == [None, None]
    clean = [i for i in instances if i["key"] not in (5, 40)]
    predicted = [p for p in result.predictions.tolist() if p is not None]
    assert predicted == own_predictions(model, clean)
    # Two poisoned rows in 64: about 2 x 2 x log2(64) frames, not one per row.
    assert poisoned_model.pipeline.calls <= 2 * (1 + 2 * 2 * 6)


def test_one_clients_poison_does_not_fail_the_others_in_its_micro_batch(
    entry: Any, poisoned_model: Any, model: Any
) -> None:
    batching = MicroBatchingRunner(poisoned_model)
    entry.runner = runner(batching.predict)
    clean_a, poisoned, clean_b = (
        flowers(7, seed=31),
        poison(flowers(5, seed=32), 2),
        flowers(9, seed=33),
    )

    async def three_clients() -> list[Any]:
        return await asyncio.gather(
            entry.predict(instances=clean_a),
            entry.predict(instances=poisoned, errors="per_instance"),
            entry.predict(instances=clean_b),
        )

    answer_a, answer_poisoned, answer_b = (answered(a) for a in asyncio.run(three_clients()))
    assert batching.calls == [[7, 5, 9]]  # all three shared one micro-batch
    for instances, answer in ((clean_a, answer_a), (clean_b, answer_b)):
        assert [p["prediction"] for p in answer["predictions"]] == own_predictions(model, instances)
    entries = answer_poisoned["predictions"]
    assert [e["key"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[2]["error"]["code"] == "model_error"
    assert answer_poisoned["summary"] == {"received": 5, "predicted": 4, "failed": 1}
    clean = [i for i in poisoned if i["key"] != 2]
    assert [e["prediction"] for e in entries if "prediction" in e] == own_predictions(model, clean)


def test_in_reject_mode_a_row_the_model_cannot_take_fails_its_request_with_422(
    entry: Any, poisoned_model: Any
) -> None:
    entry.runner = runner(MicroBatchingRunner(poisoned_model).predict)
    answer = asyncio.run(entry.predict(instances=poison(flowers(4, seed=34), 3)))
    assert answer.status_code == 422
    assert b"model_error" in answer.body and b"key 3" in answer.body


def test_per_instance_mode_answers_every_key_in_order_with_a_prediction_or_its_error(
    entry: Any, model: Any
) -> None:
    instances = flowers(6, seed=40, keys=["a", "b", "c", "d", "e", "f"])
    instances[1]["features"]["sepal_width_cm"] = "x"
    del instances[3]["features"]["petal_length_cm"]
    instances[4]["features"]["petal_width_cm"] = float("inf")
    answer = answered(asyncio.run(entry.predict(instances=instances, errors="per_instance")))
    entries = answer["predictions"]
    assert [e["key"] for e in entries] == ["a", "b", "c", "d", "e", "f"]
    codes = {e["key"]: e["error"]["code"] for e in entries if "error" in e}
    assert codes == {"b": "wrong_type", "d": "missing_feature", "e": "out_of_range"}
    assert "'b'" in entries[1]["error"]["message"]
    clean = [instances[i] for i in (0, 2, 5)]
    assert [e["prediction"] for e in entries if "prediction" in e] == own_predictions(model, clean)
    assert answer["summary"] == {"received": 6, "predicted": 3, "failed": 3}


def test_per_instance_columns_put_null_where_a_key_has_an_error(entry: Any, model: Any) -> None:
    instances = flowers(4, seed=42, keys=["a", "b", "c", "d"])
    body = columns_of(instances)
    body["columns"]["sepal_width_cm"][1] = "x"
    answer = answered(asyncio.run(entry.predict(**body, errors="per_instance")))
    assert answer["keys"] == ["a", "b", "c", "d"]
    assert answer["predictions"][1] is None
    assert all(column[1] is None for column in answer["probabilities"].values())
    assert [e["key"] for e in answer["errors"]] == ["b"]
    assert answer["errors"][0]["error"]["code"] == "wrong_type"
    clean = [instances[i] for i in (0, 2, 3)]
    assert [answer["predictions"][i] for i in (0, 2, 3)] == own_predictions(model, clean)


def test_duplicate_keys_reject_the_request_even_in_per_instance_mode(entry: Any) -> None:
    instances = flowers(3, seed=41, keys=["a", "b", "a"])
    answer = asyncio.run(entry.predict(instances=instances, errors="per_instance"))
    assert answer.status_code == 400 and b"duplicate_key" in answer.body


def version_mismatches(side: str) -> float:
    return REGISTRY.get_sample_value("keyed_model_version_mismatches_total", {"side": side}) or 0.0


def test_the_runner_refuses_a_block_sent_for_another_model_version(service: Any) -> None:
    runner_service = service.ModelRunner()
    instances = flowers(5, seed=9)
    blocks = [
        block("c0", [0, 1, 2], instances[:3]),
        block("c1", [0, 1], instances[3:], model="iris_classifier:another"),
    ]
    before = version_mismatches("runner")
    mine, theirs = asyncio.run(runner_service.predict(blocks))
    served = runner_service.model.spec.tag
    assert mine.model == served and mine.predictions.tolist() == own_predictions(
        runner_service.model, instances[:3]
    )
    assert theirs.model == served and theirs.keys.tolist() == [0, 1]
    assert theirs.predictions.tolist() == [None, None]
    assert {e.error.code for e in theirs.errors} == {"model_version"}
    assert version_mismatches("runner") == before + 1


def test_results_of_another_model_version_are_answered_503_never_200(
    entry: Any, model: Any
) -> None:
    # A runner that restarted with another version: it predicts, but not with ours.
    from dataclasses import replace

    from keyed_serving.model.predicting import LoadedModel

    def relabelled(results: list[BlockResult]) -> list[BlockResult]:
        return [r.model_copy(update={"model": "iris_classifier:another"}) for r in results]

    refusing = LoadedModel(replace(model.spec, tag="iris_classifier:another"), model.pipeline)
    for faulty in (MicroBatchingRunner(model, mangle=relabelled), MicroBatchingRunner(refusing)):
        entry.runner = runner(faulty.predict)
        before = version_mismatches("entry")
        for body in ({"instances": flowers(4, seed=5)}, columns_of(flowers(4, seed=6))):
            answer = asyncio.run(entry.predict(**body, errors="per_instance"))
            assert answer.status_code == 503, answer.body
            assert answer.headers["Retry-After"] == str(get_settings().retry_after_s)
            assert entry.spec.tag.encode() in answer.body
        assert version_mismatches("entry") == before + 2


def test_a_body_whose_keys_are_cut_from_its_text_is_answered_as_one_read_whole(
    entry: Any, poisoned_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same answer, byte for byte, whether /predict cuts a columnar body's keys from its
    text or reads them as strings: clean, with rows the model raises on and a bad value
    answered per key, with a key sent twice (and the same document for a spaced body). The
    blocks and results cross a pickled hop."""
    import pickle

    from keyed_serving.serving import validate

    batching = MicroBatchingRunner(poisoned_model)

    async def over_the_hop(blocks: Blocks) -> list[BlockResult]:
        results = await batching.predict(pickle.loads(pickle.dumps(blocks)))
        return pickle.loads(pickle.dumps(results))  # type: ignore[no-any-return]

    entry.runner = runner(over_the_hop)
    instances = poison(flowers(600, seed=44, keys=[f"c-{i}" for i in range(600)]), 17, 420)
    columns = {f: [i["features"][f] for i in instances] for f in FEATURES}
    clean = {"keys": [f"k{i}" for i in range(600)], "columns": flowers_columns(600, seed=45)}
    columns["petal_width_cm"][99] = "wide"
    per_key = {"keys": [i["key"] for i in instances], "columns": columns, "errors": "per_instance"}
    twice = {"keys": [*clean["keys"][:-1], "k3"], "columns": clean["columns"]}
    cut_out = validate._keys_cut_out
    taken: list[bool] = []

    def spied(raw: bytes) -> Any:
        read = cut_out(raw)
        taken.append(read is not None)
        return read

    def answer(body: dict[str, Any] | bytes, cut: bool) -> tuple[int, bytes]:
        monkeypatch.setattr(validate, "_keys_cut_out", spied if cut else lambda raw: None)
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        response = asyncio.run(entry.predict_raw(raw))
        return response.status_code, response.body

    for body, status in ((clean, 200), (per_key, 200), (twice, 400)):
        assert answer(body, cut=True) == answer(body, cut=False)
        assert answer(body, cut=True)[0] == status
    # Spaced as Python's json (and requests) write it: the keys are answered as their text
    # has them, spaces and all; the same document.
    spaced_status, spaced = answer(json.dumps(clean).encode(), cut=True)
    assert spaced_status == 200 and b'"k0", "k1"' in spaced
    assert orjson.loads(spaced) == orjson.loads(answer(clean, cut=False)[1])
    assert taken == [True] * 7
    read = orjson.loads(answer(per_key, cut=True)[1])
    assert read["keys"] == per_key["keys"]
    assert {e["key"]: e["error"]["code"] for e in read["errors"]} == {
        "c-17": "model_error",
        "c-420": "model_error",
        "c-99": "wrong_type",
    }


def flowers_columns(n: int, seed: int) -> dict[str, list[Any]]:
    instances = flowers(n, seed)
    return {f: [i["features"][f] for i in instances] for f in FEATURES}
