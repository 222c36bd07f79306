from __future__ import annotations

import random

import numpy as np
import pytest

from keyed_serving.schemas import BlockResult, KeyedBlock
from keyed_serving.serving.chunking import cut
from keyed_serving.serving.reassemble import KeyMismatch, ModelVersionMismatch, reassemble_by_key
from keyed_serving.serving.validate import ValidBatch

MODEL = "iris:v1"


def batch(keys: list) -> ValidBatch:
    return ValidBatch(len(keys), keys, [np.arange(len(keys), dtype=np.float64)])


def answer(blocks: list[KeyedBlock]) -> list[BlockResult]:
    """What a correct runner gives: per block, its chunk id, its keys and a result per row
    (here the row's value, so a result can be traced back to its row)."""
    return [
        BlockResult(chunk=b.chunk, model=b.model, keys=b.keys, predictions=b.columns[0].copy())
        for b in blocks
    ]


def test_cut_keeps_every_row_in_order_under_unique_chunk_ids() -> None:
    blocks = cut(batch(list(range(1234))), 500, MODEL)
    assert [len(b.keys) for b in blocks] == [500, 500, 234]
    assert len({b.chunk for b in blocks}) == 3
    assert [k for b in blocks for k in b.keys.tolist()] == list(range(1234))
    assert [v for b in blocks for v in b.columns[0].tolist()] == list(range(1234))


def test_results_in_any_order_come_back_in_request_order() -> None:
    blocks = cut(batch(["a", "b", "c", "d", "e"]), 2, MODEL)
    results = answer(blocks)
    for result in results:  # rows shuffled within each block, blocks shuffled too
        order = np.random.default_rng(3).permutation(len(result.keys))
        result.keys, result.predictions = result.keys[order], result.predictions[order]
    random.Random(3).shuffle(results)
    scored = reassemble_by_key(blocks, results)
    assert scored.predictions == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_missing_result_is_a_mismatch() -> None:
    blocks = cut(batch([0, 1, 2]), 10, MODEL)
    [result] = answer(blocks)
    short = result.model_copy(update={"keys": result.keys[:-1], "predictions": [0.0, 1.0]})
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(blocks, [short])
    assert len(caught.value.missing) == 1 and caught.value.missing[0][2] == 2


def test_a_missing_block_is_a_mismatch() -> None:
    blocks = cut(batch([0, 1, 2, 3]), 2, MODEL)
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(blocks, answer(blocks)[:1])
    assert [pair[2] for pair in caught.value.missing] == [2, 3]


def test_a_repeated_result_is_a_mismatch_even_when_the_count_adds_up() -> None:
    blocks = cut(batch([0, 1, 2]), 10, MODEL)
    [result] = answer(blocks)
    result.keys = np.array([0, 0, 2], dtype=object)
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(blocks, [result])
    assert caught.value.repeated and caught.value.missing


def test_a_prediction_missing_without_an_error_is_a_mismatch() -> None:
    blocks = cut(batch(["a", "b"]), 10, MODEL)
    [result] = answer(blocks)
    result.predictions = np.array([None, 1.0], dtype=object)
    with pytest.raises(KeyMismatch):
        reassemble_by_key(blocks, [result])


def test_an_equal_key_from_another_request_is_a_mismatch() -> None:
    # Two requests both number their rows 0..2; request B's rows must not answer A.
    mine = cut(batch([0, 1, 2]), 10, MODEL)
    theirs = cut(batch([0, 1, 2]), 10, MODEL)
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(mine, answer(theirs))
    assert len(caught.value.missing) == 3 and len(caught.value.unexpected) == 3


def test_integer_and_string_keys_are_not_confused() -> None:
    blocks = cut(batch([1, "1"]), 10, MODEL)
    [result] = answer(blocks)
    swapped = result.model_copy(
        update={
            "keys": np.array(["1", 1], dtype=object),
            "predictions": result.predictions[::-1].copy(),
        }
    )
    assert reassemble_by_key(blocks, [swapped]).predictions == [0.0, 1.0]
    confused = result.model_copy(update={"keys": np.array([1, 1], dtype=object)})
    with pytest.raises(KeyMismatch):
        reassemble_by_key(blocks, [confused])


def test_every_block_carries_the_model_version_it_is_sent_for() -> None:
    assert {b.model for b in cut(batch(list(range(25))), 10, MODEL)} == {MODEL}


def test_a_result_from_another_model_version_is_refused_even_with_the_right_keys() -> None:
    blocks = cut(batch([0, 1, 2, 3]), 2, MODEL)
    results = answer(blocks)
    results[1] = results[1].model_copy(update={"model": "iris:v2"})
    with pytest.raises(ModelVersionMismatch) as caught:
        reassemble_by_key(blocks, results)
    assert (caught.value.sent, caught.value.got) == (MODEL, "iris:v2")
