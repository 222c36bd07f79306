"""The search for the rows a model raises on: bounded by a budget of model calls, every key
answered, and off the runner's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import pytest
from support import make_customer_table, own_predictions, save_strict_copy

from keyed_serving.model.predicting import IsolationBudget, LoadedModel
from keyed_serving.model.store import MODEL_FILE
from keyed_serving.schemas import KeyedBlock
from keyed_serving.serving.chunking import key_array

UNBOUNDED_TIME = 3600.0  # the call budget is what these tests are about


@pytest.fixture(scope="module")
def strict_model(customer_model: str) -> str:
    return save_strict_copy(customer_model, "customers_strict_isolation")


def load(tag: str, budget: IsolationBudget) -> LoadedModel:
    stored = bentoml.models.get(tag)
    return LoadedModel.load(
        str(stored.tag), stored.info.metadata, stored.path_of(MODEL_FILE), budget
    )


def count_calls(model: LoadedModel, before: Callable[[], None] = lambda: None) -> list[str]:
    """Counts the model's calls (one per frame it predicts); the thread of each, by name."""
    calls: list[str] = []
    predict = model._predict

    def counted(frame: pd.DataFrame) -> Any:
        calls.append(threading.current_thread().name)
        before()
        return predict(frame)

    model._predict = counted  # type: ignore[method-assign]
    return calls


def customer_blocks(
    model: LoadedModel, rows: int, bad: int, callers: int, seed: int
) -> tuple[list[KeyedBlock], pd.DataFrame, set[str]]:
    """A micro-batch of ``callers`` blocks holding ``rows`` rows, ``bad`` of them, scattered,
    with a plan the strict model raises on; the table and the bad keys."""
    table = make_customer_table(rows, seed=seed)
    rng = np.random.default_rng(seed)
    poisoned = rng.choice(rows, size=bad, replace=False)
    table.loc[poisoned, "plan"] = "platinum"
    names = model.spec.feature_names
    blocks = []
    for part in np.array_split(np.arange(rows), callers):
        chunk = table.iloc[part]
        blocks.append(
            KeyedBlock(
                chunk=f"caller-{part[0]}",
                model=model.spec.tag,
                keys=key_array(chunk["customer_id"].tolist()),
                columns=[
                    np.asarray(
                        [None if v != v else v for v in chunk[n].tolist()],
                        dtype=np.float64 if f.type == "number" else object,
                    )
                    for n, f in zip(names, model.spec.features, strict=True)
                ],
            )
        )
    return blocks, table, set(table["customer_id"].iloc[poisoned])


def answers_by_key(results: Any) -> dict[str, tuple[Any, Any]]:
    """Every key's prediction or error (the other None), over all blocks' results."""
    answered: dict[str, tuple[Any, Any]] = {}
    for result in results:
        errors = {e.row: e.error for e in result.errors}
        for row, key in enumerate(result.keys.tolist()):
            assert key not in answered
            answered[key] = (result.predictions[row], errors.get(row))
    return answered


@pytest.mark.parametrize(("bad", "max_calls"), [(150, 64), (400, 32), (3000, 100)])
def test_many_bad_rows_are_searched_within_the_budget_and_every_key_is_answered(
    strict_model: str, bad: int, max_calls: int
) -> None:
    model = load(strict_model, IsolationBudget(max_calls=max_calls, max_s=UNBOUNDED_TIME))
    blocks, table, poisoned = customer_blocks(model, 3000, bad, callers=4, seed=bad)
    calls = count_calls(model)
    answered = answers_by_key(model.predict_blocks(blocks))
    assert len(calls) <= 1 + max_calls  # the whole micro-batch, then the budget
    assert set(answered) == set(table["customer_id"])
    good = table[~table["customer_id"].isin(poisoned)]
    expected = {}
    if len(good):
        expected = dict(zip(good["customer_id"], own_predictions(strict_model, good), strict=True))
    not_told_apart = 0
    for key, (prediction, error) in answered.items():
        assert (prediction is None) == (error is not None), key
        if error is not None:
            assert error.code == "model_error" and repr(key) in error.message
            not_told_apart += "not told apart" in error.message
        if key in poisoned:
            assert error is not None
        elif prediction is not None:
            assert prediction == expected[key]
    assert not_told_apart > 0  # this budget cannot isolate them all: said so, key by key


def test_within_the_budget_every_bad_row_is_isolated_and_every_good_one_predicted(
    strict_model: str,
) -> None:
    model = load(strict_model, IsolationBudget(max_calls=256, max_s=UNBOUNDED_TIME))
    blocks, table, poisoned = customer_blocks(model, 3000, 12, callers=3, seed=4)
    calls = count_calls(model)
    answered = answers_by_key(model.predict_blocks(blocks))
    assert len(calls) <= 1 + 256
    failed = {key for key, (_, error) in answered.items() if error is not None}
    assert failed == poisoned
    assert all("platinum" in answered[key][1].message for key in poisoned)
    good = table[~table["customer_id"].isin(poisoned)]
    assert [answered[key][0] for key in good["customer_id"]] == own_predictions(strict_model, good)


def test_the_search_runs_off_the_event_loop_and_the_usual_call_on_it(strict_model: str) -> None:
    model = load(strict_model, IsolationBudget(max_calls=64, max_s=UNBOUNDED_TIME))
    blocks, _, poisoned = customer_blocks(model, 500, 3, callers=2, seed=8)
    served_meanwhile = threading.Event()
    calls: list[str] = []
    loop_blocked: list[bool] = []

    def second_call_waits_for_the_loop() -> None:
        # While the model searches, the loop must go on serving: here, a task that sets an
        # event the search waits for. On the loop itself this would wait in vain.
        if len(calls) == 2:
            loop_blocked.append(not served_meanwhile.wait(timeout=10))

    calls = count_calls(model, before=second_call_waits_for_the_loop)

    async def runner_and_another_task() -> Any:
        search = asyncio.create_task(model.predict_blocks_async(blocks))
        while len(calls) < 2:  # the search has started (in its thread)
            await asyncio.sleep(0)
        served_meanwhile.set()
        return await search

    loop_thread = threading.current_thread().name
    answered = answers_by_key(asyncio.run(runner_and_another_task()))
    assert loop_blocked == [False]
    assert {key for key, (_, error) in answered.items() if error is not None} == poisoned
    assert calls[0] == loop_thread and all(name != loop_thread for name in calls[1:])
    clean = count_calls(model)
    clean_blocks, _, _ = customer_blocks(model, 200, 0, callers=2, seed=9)
    asyncio.run(model.predict_blocks_async(clean_blocks))
    assert clean == [loop_thread]  # the usual case: one call, on the loop
