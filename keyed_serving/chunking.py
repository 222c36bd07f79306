"""The cut stage: keyed rows -> runner-sized chunks, each row still holding its key.

Each chunk gets an id that no other chunk, in this request or any other, shares. The
id travels with every row, so equal keys from different requests (everyone numbers
rows 0..n-1) can sit in one micro-batch and still never be taken for one another.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from keyed_serving.schemas import KeyedRow
from keyed_serving.validate import ValidRow


@dataclass(frozen=True)
class Chunk:
    id: str
    rows: list[KeyedRow]


def cut(rows: Sequence[ValidRow], chunk_rows: int) -> list[Chunk]:
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    chunks = []
    for start in range(0, len(rows), chunk_rows):
        chunk_id = uuid.uuid4().hex
        chunks.append(
            Chunk(
                chunk_id,
                [
                    KeyedRow(chunk=chunk_id, key=row.key, values=row.values)
                    for row in rows[start : start + chunk_rows]
                ],
            )
        )
    return chunks
