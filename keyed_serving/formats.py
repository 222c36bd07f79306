"""Table file formats, told by a file's extension, and the media type each is sent as.

Apart from the reader (:mod:`keyed_serving.tables`) so that the entry can name a file's
format without importing pandas and pyarrow, which only the file routes need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Format = Literal["csv", "parquet", "jsonl"]
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/jsonl",
}
EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def format_of(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(
            f"{path}: unknown format {suffix!r}; use one of {', '.join(sorted(EXTENSIONS))}"
        )
    return EXTENSIONS[suffix]
