"""The entry and runner services in-process, with the runner replaced where a test needs a
runner that merges, drops, repeats, swaps or fails rows on purpose."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from bentoml.exceptions import InternalServerError, ServiceUnavailable
from prometheus_client import REGISTRY

from keyed_serving.schemas import Instance, KeyedResult, KeyedRow
from keyed_serving.settings import get_settings

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


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


def flowers(n: int, seed: int, keys: Sequence[Any] | None = None) -> list[Instance]:
    rng = random.Random(seed)
    keys = list(range(n)) if keys is None else keys
    return [
        Instance(
            key=key,
            features={
                "sepal_length_cm": round(rng.uniform(4.3, 7.9), 1),
                "sepal_width_cm": round(rng.uniform(2.0, 4.4), 1),
                "petal_length_cm": round(rng.uniform(1.0, 6.9), 1),
                "petal_width_cm": round(rng.uniform(0.1, 2.5), 1),
            },
        )
        for key in keys
    ]


def own_predictions(model: Any, instances: list[Instance]) -> list[Any]:
    import pandas as pd

    frame = pd.DataFrame([i.features for i in instances], columns=FEATURES)
    return [p.item() if hasattr(p, "item") else p for p in model.pipeline.predict(frame)]


def runner(predict: Callable[[list[KeyedRow]], Any]) -> Any:
    """Stands in for the proxy `bentoml.depends` gives the entry: `.to_async.predict(rows)`."""
    return SimpleNamespace(to_async=SimpleNamespace(predict=predict))


class MicroBatchingRunner:
    """Holds calls until `callers` have arrived, predicts them as one micro-batch with the real
    model, and hands the output back by position, as BentoML's dispatcher does. `mangle`
    changes the micro-batch's output first, as a faulty batch function would."""

    def __init__(
        self,
        model: Any,
        callers: int,
        mangle: Callable[[list[KeyedResult]], list[KeyedResult]] = lambda r: r,
    ):
        self.model, self.callers, self.mangle = model, callers, mangle
        self.waiting: list[tuple[list[KeyedRow], asyncio.Future]] = []
        self.batch_sizes: list[int] = []

    async def predict(self, rows: list[KeyedRow]) -> list[KeyedResult]:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((rows, future))
        if len(self.waiting) == self.callers:
            batch = [row for rows_, _ in self.waiting for row in rows_]
            self.batch_sizes.append(len(batch))
            output = self.mangle(self.model.predict_rows(batch))
            start = 0
            for rows_, waiting_future in self.waiting:
                waiting_future.set_result(output[start : start + len(rows_)])
                start += len(rows_)
            self.waiting = []
        return await future


def always_raising(error: Exception) -> tuple[Callable[[list[KeyedRow]], Any], list[int]]:
    """A runner call that always fails with `error`, and the list of its attempts' sizes."""
    attempts: list[int] = []

    async def predict(rows: list[KeyedRow]) -> list[KeyedResult]:
        attempts.append(len(rows))
        raise error

    return predict, attempts


def mismatches() -> float:
    return REGISTRY.get_sample_value("keyed_key_mismatches_total") or 0.0


async def predict_all(entry: Any, requests: list[list[Instance]]) -> list[Any]:
    return await asyncio.gather(*(entry.predict(instances=r) for r in requests))


def test_predictions_come_back_in_request_order_with_their_keys(entry: Any, model: Any) -> None:
    instances = flowers(40, seed=1, keys=[f"k{i}" for i in random.Random(2).sample(range(99), 40)])
    answer = asyncio.run(entry.predict(instances=instances))
    assert answer.model == entry.spec.tag
    assert [p.key for p in answer.predictions] == [i.key for i in instances]
    assert [p.prediction for p in answer.predictions] == own_predictions(model, instances)
    for p in answer.predictions:
        assert set(p.probabilities) == {"setosa", "versicolor", "virginica"}
        assert abs(sum(p.probabilities.values()) - 1) < 1e-9


def test_a_large_request_is_cut_into_chunks_and_reassembled(entry: Any, model: Any) -> None:
    chunk_rows = get_settings().chunk_rows
    calls: list[int] = []

    async def counting(rows: list[KeyedRow]) -> list[KeyedResult]:
        calls.append(len(rows))
        return model.predict_rows(rows)

    entry.runner = runner(counting)
    instances = flowers(2 * chunk_rows + 37, seed=3)
    answer = asyncio.run(entry.predict(instances=instances))
    assert sorted(calls) == sorted([chunk_rows, chunk_rows, 37])
    assert [p.key for p in answer.predictions] == [i.key for i in instances]
    assert [p.prediction for p in answer.predictions] == own_predictions(model, instances)


def test_equal_keys_from_requests_sharing_a_micro_batch_stay_paired(entry: Any, model: Any) -> None:
    # Everyone numbers their rows 0..n-1: one micro-batch holds key 0 three times.
    batching = MicroBatchingRunner(model, callers=3)
    entry.runner = runner(batching.predict)
    requests = [flowers(n, seed=10 + n) for n in (5, 9, 7)]
    answers = asyncio.run(predict_all(entry, requests))
    assert batching.batch_sizes == [21]
    for instances, answer in zip(requests, answers, strict=True):
        assert [p.key for p in answer.predictions] == list(range(len(instances)))
        assert [p.prediction for p in answer.predictions] == own_predictions(model, instances)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda out: out[1:], id="one-row-too-few"),
        pytest.param(lambda out: [out[0], *out[:-1]], id="a-row-repeated"),
        # The two requests' blocks change places: same keys 0..5, same lengths.
        pytest.param(lambda out: out[6:] + out[:6], id="requests-swapped"),
    ],
)
def test_a_runner_that_mispairs_rows_gets_500_never_a_wrong_200(
    entry: Any, model: Any, fault: Callable
) -> None:
    entry.runner = runner(MicroBatchingRunner(model, callers=2, mangle=fault).predict)
    before = mismatches()
    answers = asyncio.run(predict_all(entry, [flowers(6, seed=1), flowers(6, seed=2)]))
    assert [a.status_code for a in answers] == [500, 500]
    assert all(b"did not match the keys" in a.body for a in answers)
    assert mismatches() - before == 2


def test_rows_reordered_inside_a_request_still_pair_by_key(entry: Any, model: Any) -> None:
    # Results carry their keys, so an order change alone is harmless: answered in request order.
    swap_first_two = MicroBatchingRunner(model, callers=1, mangle=lambda o: [o[1], o[0], *o[2:]])
    entry.runner = runner(swap_first_two.predict)
    instances = flowers(6, seed=1)
    answer = asyncio.run(entry.predict(instances=instances))
    assert [p.key for p in answer.predictions] == list(range(6))
    assert [p.prediction for p in answer.predictions] == own_predictions(model, instances)


def test_transient_runner_failures_are_retried(entry: Any, model: Any) -> None:
    failures = [
        ServiceUnavailable("process is overloaded"),
        aiohttp.ServerDisconnectedError(),
        ConnectionResetError(),
    ]

    async def flaky(rows: list[KeyedRow]) -> list[KeyedResult]:
        if failures:
            raise failures.pop()
        return model.predict_rows(rows)

    entry.runner = runner(flaky)
    answer = asyncio.run(entry.predict(instances=flowers(3, seed=4)))
    assert failures == [] and [p.key for p in answer.predictions] == [0, 1, 2]


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

    async def hangs(rows: list[KeyedRow]) -> list[KeyedResult]:
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

    async def must_not_run(rows: list[KeyedRow]) -> list[KeyedResult]:
        nonlocal called
        called = True
        return []

    entry.runner = runner(must_not_run)
    instances = flowers(3, seed=8)
    instances[2] = Instance(key="bad", features={"sepal_length_cm": 1.0})
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


def test_the_runner_predicts_a_micro_batch_of_keyed_rows_and_counts_it(service: Any) -> None:
    runner_service = service.ModelRunner()
    instances = flowers(5, seed=9)
    rows = [
        KeyedRow(chunk=f"c{n % 2}", key=n % 3, values=[i.features[f] for f in FEATURES])
        for n, i in enumerate(instances)
    ]
    batches_before = REGISTRY.get_sample_value("keyed_micro_batch_rows_count") or 0.0
    results = runner_service.predict(rows)
    assert [(r.chunk, r.key) for r in results] == [(r.chunk, r.key) for r in rows]
    assert [r.prediction for r in results] == own_predictions(runner_service.model, instances)
    assert REGISTRY.get_sample_value("keyed_micro_batch_rows_count") == batches_before + 1
    assert REGISTRY.get_sample_value("keyed_micro_batch_chunks_sum") is not None


class PoisonedPipeline:
    """The real pipeline, except that it raises on any frame holding a sepal length of 666,
    as a model raises on a value or category it cannot take."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
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
    from keyed_serving.model import LoadedModel

    return LoadedModel(model.spec, PoisonedPipeline(model.pipeline))


def poison(instances: list[Instance], *positions: int) -> list[Instance]:
    for position in positions:
        instances[position].features["sepal_length_cm"] = 666
    return instances


def test_bisection_isolates_the_rows_the_model_raises_on(poisoned_model: Any, model: Any) -> None:
    instances = poison(flowers(64, seed=20), 5, 40)
    rows = [
        KeyedRow(chunk="c", key=i.key, values=[i.features[f] for f in FEATURES]) for i in instances
    ]
    results = poisoned_model.predict_rows(rows)
    assert [r.key for r in results] == [r.key for r in rows]
    failed = [r.key for r in results if r.error is not None]
    assert failed == [5, 40]
    assert all(
        r.error.code == "model_error" and "Traceback" not in r.error.message
        for r in results
        if r.error is not None
    )
    clean = [i for i in instances if i.key not in (5, 40)]
    assert [r.prediction for r in results if r.error is None] == own_predictions(model, clean)
    # Two poisoned rows in 64: about 2 x 2 x log2(64) frames, not one per row.
    assert poisoned_model.pipeline.calls <= 2 * (1 + 2 * 2 * 6)


def test_one_clients_poison_does_not_fail_the_others_in_its_micro_batch(
    entry: Any, poisoned_model: Any, model: Any
) -> None:
    batching = MicroBatchingRunner(poisoned_model, callers=3)
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

    answer_a, answer_poisoned, answer_b = asyncio.run(three_clients())
    assert batching.batch_sizes == [21]  # all three shared one micro-batch
    for instances, answer in ((clean_a, answer_a), (clean_b, answer_b)):
        assert [p.prediction for p in answer.predictions] == own_predictions(model, instances)
    entries = answer_poisoned.predictions
    assert [e.key for e in entries] == [0, 1, 2, 3, 4]
    assert entries[2].error.code == "model_error"
    assert answer_poisoned.summary.model_dump() == {"received": 5, "predicted": 4, "failed": 1}
    clean = [i for i in poisoned if i.key != 2]
    assert [e.prediction for e in entries if hasattr(e, "prediction")] == own_predictions(
        model, clean
    )


def test_in_reject_mode_a_row_the_model_cannot_take_fails_its_request_with_422(
    entry: Any, poisoned_model: Any
) -> None:
    entry.runner = runner(MicroBatchingRunner(poisoned_model, callers=1).predict)
    answer = asyncio.run(entry.predict(instances=poison(flowers(4, seed=34), 3)))
    assert answer.status_code == 422
    assert b"model_error" in answer.body and b"key 3" in answer.body


def test_per_instance_mode_answers_every_key_in_order_with_a_prediction_or_its_error(
    entry: Any, model: Any
) -> None:
    entry.runner = runner(lambda rows: asyncio.sleep(0, model.predict_rows(rows)))
    instances = flowers(6, seed=40, keys=["a", "b", "c", "d", "e", "f"])
    instances[1] = Instance(key="b", features={**instances[1].features, "sepal_width_cm": "x"})
    del instances[3].features["petal_length_cm"]
    instances[4].features["petal_width_cm"] = float("inf")
    answer = asyncio.run(entry.predict(instances=instances, errors="per_instance"))
    assert [e.key for e in answer.predictions] == ["a", "b", "c", "d", "e", "f"]
    codes = {e.key: e.error.code for e in answer.predictions if hasattr(e, "error")}
    assert codes == {"b": "wrong_type", "d": "missing_feature", "e": "out_of_range"}
    assert "'b'" in answer.predictions[1].error.message
    clean = [instances[i] for i in (0, 2, 5)]
    assert [e.prediction for e in answer.predictions if hasattr(e, "prediction")] == (
        own_predictions(model, clean)
    )
    assert answer.summary.model_dump() == {"received": 6, "predicted": 3, "failed": 3}


def test_duplicate_keys_reject_the_request_even_in_per_instance_mode(entry: Any) -> None:
    instances = flowers(3, seed=41, keys=["a", "b", "a"])
    answer = asyncio.run(entry.predict(instances=instances, errors="per_instance"))
    assert answer.status_code == 400 and b"duplicate_key" in answer.body
