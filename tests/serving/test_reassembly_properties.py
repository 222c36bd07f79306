"""Property tests of the keyed path: for any interleaving, split, reordering and failure
pattern, each key maps to its own result or its own error; any corruption is caught."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyed_serving.schemas import BlockError, BlockResult, InstanceError, KeyedBlock
from keyed_serving.serving.chunking import cut
from keyed_serving.serving.reassemble import KeyMismatch, ModelVersionMismatch, reassemble_by_key
from keyed_serving.serving.validate import ValidBatch

# Few distinct keys, so that different requests share keys as real clients do.
keys = st.one_of(st.integers(-3, 12), st.sampled_from(["0", "1", "a", "b", "c-001"]))
request_keys = st.lists(keys, min_size=1, max_size=25, unique_by=lambda k: (type(k), k))


def owner(request: int, key: object) -> str:
    return f"{request}:{type(key).__name__}:{key}"


def objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def result_for(request: int, block: KeyedBlock, failed: list[bool], order: list[int]) -> Any:
    """The runner's result for a block, its rows in ``order``, ``failed`` rows as errors."""
    sent = block.keys.tolist()
    got = [sent[i] for i in order]
    errors = [
        BlockError(row=row, error=InstanceError(code="model_error", message=owner(request, key)))
        for row, key in enumerate(got)
        if failed[row]
    ]
    predictions = [None if failed[row] else owner(request, key) for row, key in enumerate(got)]
    return BlockResult(chunk=block.chunk, model=block.model, keys=objects(got),
                       predictions=objects(predictions), errors=errors)  # fmt: skip


@st.composite
def served_requests(draw: st.DrawFn) -> tuple[list[list[KeyedBlock]], list[list[BlockResult]]]:
    """Requests cut into blocks; the blocks' results come back in a random order, each with
    its rows in a random order, some rows failed by the model."""
    requests = draw(st.lists(request_keys, min_size=1, max_size=6))
    chunk_rows = draw(st.integers(1, 7))
    blocked = [
        cut(ValidBatch(len(ks), ks, [np.zeros(len(ks))]), chunk_rows, "m:v1") for ks in requests
    ]
    answers: list[list[BlockResult]] = []
    for request, blocks in enumerate(blocked):
        results = []
        for block in blocks:
            n = len(block.keys)
            failed = draw(st.lists(st.booleans(), min_size=n, max_size=n))
            order = draw(st.permutations(range(n)))
            results.append(result_for(request, block, failed, list(order)))
        answers.append(draw(st.permutations(results)))
    return blocked, answers


@settings(max_examples=300, deadline=None)
@given(served_requests())
def test_every_key_gets_its_own_result_or_its_own_error(served: Any) -> None:
    blocked, answers = served
    for request, (blocks, answer) in enumerate(zip(blocked, answers, strict=True)):
        scored = reassemble_by_key(blocks, answer)
        sent = [key for block in blocks for key in block.keys.tolist()]
        assert len(scored.predictions) == len(sent)
        for row, key in enumerate(sent):
            if scored.predictions[row] is None:
                assert scored.errors[row].message == owner(request, key)
            else:
                assert scored.predictions[row] == owner(request, key)


@settings(max_examples=300, deadline=None)
@given(served_requests(), st.data())
def test_a_dropped_repeated_or_misrouted_row_is_always_caught(served: Any, data: Any) -> None:
    blocked, answers = served
    flat = [(r, b) for r, results in enumerate(answers) for b in range(len(results))]
    r, b = data.draw(st.sampled_from(flat))
    victim_result = answers[r][b]
    victim = data.draw(st.integers(0, len(victim_result.keys) - 1))
    fault = data.draw(st.sampled_from(["drop", "repeat", "misroute"]))
    others = [(r2, b2) for r2, b2 in flat if r2 != r]
    if fault == "misroute" and not others:
        fault = "drop"
    keys_ = victim_result.keys.tolist()
    predictions = victim_result.predictions.tolist()
    errors = {e.row: e for e in victim_result.errors}
    if fault in ("drop", "misroute"):
        moved_key, moved_prediction = keys_.pop(victim), predictions.pop(victim)
        errors = {
            (row if row < victim else row - 1): e for row, e in errors.items() if row != victim
        }
    if fault == "repeat":
        keys_.append(keys_[victim])
        predictions.append(predictions[victim])
        if victim in errors:
            errors[len(keys_) - 1] = errors[victim]
    answers[r][b] = BlockResult(
        chunk=victim_result.chunk,
        model=victim_result.model,
        keys=objects(keys_),
        predictions=objects(predictions),
        errors=[e.model_copy(update={"row": row}) for row, e in errors.items()],
    )
    if fault == "misroute":
        r2, b2 = data.draw(st.sampled_from(others))
        target = answers[r2][b2]
        answers[r2][b2] = BlockResult(
            chunk=target.chunk,
            model=target.model,
            keys=objects([*target.keys.tolist(), moved_key]),
            predictions=objects([*target.predictions.tolist(), moved_prediction]),
            errors=target.errors,
        )
    caught = 0
    for blocks, answer in zip(blocked, answers, strict=True):
        try:
            reassemble_by_key(blocks, answer)
        except KeyMismatch:
            caught += 1
    assert caught >= (2 if fault == "misroute" else 1)


@settings(max_examples=200, deadline=None)
@given(served_requests(), st.data())
def test_a_result_of_another_model_version_is_always_refused(served: Any, data: Any) -> None:
    blocked, answers = served
    flat = [(r, b) for r, results in enumerate(answers) for b in range(len(results))]
    r, b = data.draw(st.sampled_from(flat))
    answers[r][b] = answers[r][b].model_copy(update={"model": "m:v2"})
    for request, (blocks, answer) in enumerate(zip(blocked, answers, strict=True)):
        if request == r:
            with pytest.raises(ModelVersionMismatch):
                reassemble_by_key(blocks, answer)
        else:
            reassemble_by_key(blocks, answer)
