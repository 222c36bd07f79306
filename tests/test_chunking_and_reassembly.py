from __future__ import annotations

import random

import pytest

from keyed_serving.chunking import cut
from keyed_serving.reassemble import KeyMismatch, reassemble_by_key
from keyed_serving.schemas import KeyedResult
from keyed_serving.validate import ValidRow


def rows(keys: list) -> list[ValidRow]:
    return [ValidRow(i, key, [float(i)]) for i, key in enumerate(keys)]


def answer(chunks) -> list[list[KeyedResult]]:
    """What a correct runner gives: per chunk, each row's result with its chunk and key."""
    return [
        [KeyedResult(chunk=r.chunk, key=r.key, prediction=r.values[0]) for r in chunk.rows]
        for chunk in chunks
    ]


def test_cut_keeps_every_row_in_order_under_unique_chunk_ids() -> None:
    chunks = cut(rows(list(range(1234))), 500)
    assert [len(c.rows) for c in chunks] == [500, 500, 234]
    assert len({c.id for c in chunks}) == 3
    assert [r.key for c in chunks for r in c.rows] == list(range(1234))
    assert all(r.chunk == c.id for c in chunks for r in c.rows)


def test_results_in_any_order_come_back_in_request_order() -> None:
    chunks = cut(rows(["a", "b", "c", "d", "e"]), 2)
    results = answer(chunks)
    scrambled = [r for part in results for r in part]
    random.Random(3).shuffle(scrambled)
    ordered = reassemble_by_key(chunks, [scrambled[:1], scrambled[1:]])
    assert [(r.key, r.prediction) for r in ordered] == [
        ("a", 0.0),
        ("b", 1.0),
        ("c", 2.0),
        ("d", 3.0),
        ("e", 4.0),
    ]


def test_a_missing_result_is_a_mismatch() -> None:
    chunks = cut(rows([0, 1, 2]), 10)
    results = answer(chunks)
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(chunks, [results[0][:-1]])
    assert len(caught.value.missing) == 1 and caught.value.missing[0][2] == 2


def test_a_repeated_result_is_a_mismatch_even_when_the_count_adds_up() -> None:
    chunks = cut(rows([0, 1, 2]), 10)
    [part] = answer(chunks)
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(chunks, [[part[0], part[0], part[2]]])
    assert caught.value.repeated and caught.value.missing


def test_an_equal_key_from_another_request_is_a_mismatch() -> None:
    # Two requests both number their rows 0..2; request B's rows must not answer A.
    mine = cut(rows([0, 1, 2]), 10)
    theirs = cut(rows([0, 1, 2]), 10)
    with pytest.raises(KeyMismatch) as caught:
        reassemble_by_key(mine, answer(theirs))
    assert len(caught.value.missing) == 3 and len(caught.value.unexpected) == 3


def test_integer_and_string_keys_are_not_confused() -> None:
    chunks = cut(rows([1, "1"]), 10)
    [part] = answer(chunks)
    swapped = [part[0].model_copy(update={"key": "1"}), part[1].model_copy(update={"key": 1})]
    ordered = reassemble_by_key(chunks, [swapped])
    assert [(type(r.key), r.prediction) for r in ordered] == [(int, 1.0), (str, 0.0)]
