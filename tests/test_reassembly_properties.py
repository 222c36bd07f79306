"""Property tests of the keyed path: for any interleaving, split and failure pattern, each
key maps to its own result or its own error; any corruption is caught."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyed_serving.chunking import Chunk, cut
from keyed_serving.reassemble import KeyMismatch, reassemble_by_key
from keyed_serving.schemas import InstanceError, KeyedResult, KeyedRow
from keyed_serving.validate import ValidRow

# Few distinct keys, so that different requests share keys as real clients do.
keys = st.one_of(st.integers(-3, 12), st.sampled_from(["0", "1", "a", "b", "c-001"]))
request_keys = st.lists(keys, min_size=1, max_size=25, unique_by=lambda k: (type(k), k))


def owner(request: int, key: object) -> str:
    return f"{request}:{type(key).__name__}:{key}"


def result_for(request: int, row: KeyedRow, failed: bool) -> KeyedResult:
    if failed:
        return KeyedResult(
            chunk=row.chunk,
            key=row.key,
            error=InstanceError(code="model_error", message=owner(request, row.key)),
        )
    return KeyedResult(chunk=row.chunk, key=row.key, prediction=owner(request, row.key))


@st.composite
def served_requests(draw: st.DrawFn) -> tuple[list[list[Chunk]], list[list[list[KeyedResult]]]]:
    """Requests cut into chunks; all chunks merged into micro-batches in a random order and
    partition; each micro-batch's output split back by position; rows of each chunk's
    answer shuffled; some rows failed by the model."""
    requests = draw(st.lists(request_keys, min_size=1, max_size=6))
    chunk_rows = draw(st.integers(1, 7))
    chunked = [
        cut([ValidRow(i, k, [0.0]) for i, k in enumerate(ks)], chunk_rows) for ks in requests
    ]
    queue = [(r, c) for r, chunks in enumerate(chunked) for c in range(len(chunks))]
    queue = draw(st.permutations(queue))
    answers: list[list[list[KeyedResult]]] = [[[] for _ in chunks] for chunks in chunked]
    position = 0
    while position < len(queue):
        size = draw(st.integers(1, len(queue) - position))
        micro_batch = queue[position : position + size]
        position += size
        rows = [(r, row) for r, c in micro_batch for row in chunked[r][c].rows]
        failed = draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
        output = [result_for(r, row, f) for (r, row), f in zip(rows, failed, strict=True)]
        start = 0
        for r, c in micro_batch:  # back to each caller by position, as BentoML does
            n = len(chunked[r][c].rows)
            answers[r][c] = draw(st.permutations(output[start : start + n]))
            start += n
    return chunked, answers


@settings(max_examples=300, deadline=None)
@given(served_requests())
def test_every_key_gets_its_own_result_or_its_own_error(served: Any) -> None:
    chunked, answers = served
    for request, (chunks, answer) in enumerate(zip(chunked, answers, strict=True)):
        ordered = reassemble_by_key(chunks, answer)
        sent = [row.key for chunk in chunks for row in chunk.rows]
        assert [r.key for r in ordered] == sent
        for result in ordered:
            mine = owner(request, result.key)
            assert (result.error.message if result.error else result.prediction) == mine


@settings(max_examples=300, deadline=None)
@given(served_requests(), st.data())
def test_a_dropped_repeated_or_misrouted_row_is_always_caught(served: Any, data: Any) -> None:
    chunked, answers = served
    flat = [(r, c) for r, chunks in enumerate(answers) for c, rows in enumerate(chunks) if rows]
    r, c = data.draw(st.sampled_from(flat))
    victim = data.draw(st.integers(0, len(answers[r][c]) - 1))
    fault = data.draw(st.sampled_from(["drop", "repeat", "misroute"]))
    others = [(r2, c2) for r2, c2 in flat if r2 != r]
    if fault == "misroute" and not others:
        fault = "drop"
    row = answers[r][c].pop(victim) if fault != "repeat" else answers[r][c][victim]
    if fault == "repeat":
        answers[r][c].append(row)
    elif fault == "misroute":
        r2, c2 = data.draw(st.sampled_from(others))
        answers[r2][c2].append(row)
    caught = 0
    for chunks, answer in zip(chunked, answers, strict=True):
        try:
            reassemble_by_key(chunks, answer)
        except KeyMismatch:
            caught += 1
    assert caught >= (2 if fault == "misroute" else 1)
