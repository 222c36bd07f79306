"""The cut stage: validated keyed columns -> runner-sized blocks, each row still with its key.

Each block gets an id that no other block, in this request or any other, shares. The id
travels with the block's keys, so equal keys from different requests (everyone numbers
rows 0..n-1) can sit in one micro-batch and still never be taken for one another.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from keyed_serving.keys import KeyColumn
from keyed_serving.schemas import Key, KeyedBlock
from keyed_serving.serving.validate import ValidBatch


def cut(batch: ValidBatch, chunk_rows: int, model: str) -> list[KeyedBlock]:
    """Blocks of at most ``chunk_rows`` rows, each for the model version ``model``."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    blocks = []
    # Packed once: by validation where it could (else here), then cut per block.
    packed = key_array(batch.keys) if batch.key_column is None else batch.key_column
    for start in range(0, len(batch.keys), chunk_rows):
        end = start + chunk_rows
        blocks.append(
            # Built without validation: the values were judged in validate, and the keys
            # are checked when the block's results come back.
            KeyedBlock.model_construct(
                chunk=uuid.uuid4().hex,
                model=model,
                keys=packed[start:end],
                columns=[column[start:end] for column in batch.columns],
            )
        )
    return blocks


def key_array(keys: Sequence[Key]) -> KeyColumn:
    """Keys as the hop carries them: one buffer (``KeyColumn``), each key's type kept (1 and
    "1" stay apart)."""
    return KeyColumn.pack(keys)
