"""The reassemble stage: chunk results -> one answer in request order, checked key by key.

BentoML splits a micro-batch's output back to its callers by position and never checks
it. This is where the pairing is verified: every (chunk, key) sent must come back exactly
once, and nothing else may come back. Any difference is a ``KeyMismatch``; the caller
must fail the request rather than answer with a wrong or missing pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from keyed_serving.chunking import Chunk
from keyed_serving.schemas import Key, KeyedResult

Result = TypeVar("Result", bound=KeyedResult)
# (chunk id, type of key, key): 1 and "1" are different keys.
PairId = tuple[str, type, Key]


class KeyMismatch(Exception):
    def __init__(self, missing: list[PairId], unexpected: list[PairId], repeated: list[PairId]):
        self.missing, self.unexpected, self.repeated = missing, unexpected, repeated
        super().__init__(
            f"runner results do not match the keys sent: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(repeated)} repeated "
            f"(first: missing {_show(missing)}, unexpected {_show(unexpected)}, "
            f"repeated {_show(repeated)})"
        )


def _pair_id(chunk: str, key: Key) -> PairId:
    return (chunk, type(key), key)


def _show(ids: list[PairId]) -> str:
    return repr([(chunk[:8], key) for chunk, _, key in ids[:3]])


def reassemble_by_key(chunks: Sequence[Chunk], results: Sequence[Sequence[Result]]) -> list[Result]:
    """Results of every chunk, in the order the rows were sent; raises ``KeyMismatch``."""
    by_id: dict[PairId, Result] = {}
    repeated: list[PairId] = []
    for chunk_results in results:
        for result in chunk_results:
            pair = _pair_id(result.chunk, result.key)
            if pair in by_id:
                repeated.append(pair)
            by_id[pair] = result
    ordered: list[Result] = []
    missing: list[PairId] = []
    for chunk in chunks:
        for row in chunk.rows:
            pair = _pair_id(chunk.id, row.key)
            found = by_id.pop(pair, None)
            if found is None:
                missing.append(pair)
            else:
                ordered.append(found)
    unexpected = list(by_id)
    if missing or unexpected or repeated:
        raise KeyMismatch(missing, unexpected, repeated)
    return ordered
