"""What a key is: the one definition that the server, the client, the file routes and Spark
all call.

A key is a non-empty string of at most ``MAX_KEY_LENGTH`` characters (valid Unicode: no
lone surrogates), or an integer in the signed 64-bit range. The range is the one every
stage can carry exactly: JSON readers that keep integers (orjson reads a larger literal
as a float, JavaScript above 2^53), Parquet and Arrow ``int64``, Spark's ``LongType`` and
the Open Inference Protocol's ``INT64``. A larger id is sent as a string.

Keys are compared with their type: ``1`` and ``"1"`` are different keys, and a key is
echoed back exactly as sent.
"""

from __future__ import annotations

import decimal
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Key = str | int
MAX_KEY_LENGTH = 256
MIN_INTEGER_KEY = -(2**63)
MAX_INTEGER_KEY = 2**63 - 1
RULE = (
    f"a key is a non-empty string of at most {MAX_KEY_LENGTH} characters or an integer "
    f"from -2^63 to 2^63-1"
)
# A float that stands for an integer is exact up to here (pandas turns an integer column
# with a gap into float64).
_EXACT_FLOAT_INTEGER = 2**53


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a usable key, or None when it is."""
    if type(key) is str:
        if not key:
            return "empty string; " + RULE
        if len(key) > MAX_KEY_LENGTH:
            return f"string of {len(key)} characters; {RULE}"
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return "string with a lone surrogate (not valid Unicode); " + RULE
        return None
    if type(key) is int:
        if MIN_INTEGER_KEY <= key <= MAX_INTEGER_KEY:
            return None
        return f"integer outside -2^63..2^63-1; send ids this large as strings ({RULE})"
    if isinstance(key, float) and math.isfinite(key) and key.is_integer() and abs(key) >= 2**63:
        # orjson reads an integer literal beyond 64 bits as a float: say what it was.
        return f"integer outside -2^63..2^63-1; send ids this large as strings ({RULE})"
    if isinstance(key, bool):
        return f"boolean {key}; {RULE}"
    if key is None:
        return "missing (null); " + RULE
    return f"{shown(key)}; {RULE}"


def shown(value: object, width: int = 40) -> str:
    """A sent value as an error message shows it: its type and a short repr. A list or an
    object is described, not printed: it may be nested deeper than repr can go."""
    if isinstance(value, list | dict):
        return f"{type(value).__name__} of {len(value)} item(s)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= width else text[: width - 3] + '...'}"


def is_usable_key(key: object) -> bool:
    return key_problem(key) is None


def typed(key: Any) -> tuple[type, Any]:
    """A key as a set member in which 1 and "1" differ (and True is not 1)."""
    return (type(key), key)


@dataclass(frozen=True)
class KeyProblems:
    """What is wrong with a list of keys: unusable ones by position, with why, and
    duplicated ones (each with its first position and its count)."""

    unusable: list[tuple[int, str]]
    duplicated: list[tuple[int, Key, int]]

    def __bool__(self) -> bool:
        return bool(self.unusable or self.duplicated)


def find_key_problems(keys: Sequence[Any]) -> KeyProblems:
    """Unusable and duplicated keys. Keys that are all usable are checked in a few passes
    in C (types, string lengths, integer bounds, one set); a row-by-row look only happens
    where those find something."""
    kinds = set(map(type, keys))
    usable = kinds <= {str, int}
    strings: Sequence[Any] = ()
    if usable and str in kinds:
        strings = [key for key in keys if type(key) is str] if int in kinds else keys
        lengths = list(map(len, strings))
        usable = min(lengths) > 0 and max(lengths) <= MAX_KEY_LENGTH
    if usable and int in kinds:
        integers = [key for key in keys if type(key) is int] if str in kinds else keys
        usable = min(integers) >= MIN_INTEGER_KEY and max(integers) <= MAX_INTEGER_KEY
    # A lone surrogate can only come from a reader more lenient than orjson (Python's json,
    # a DataFrame); it is looked for by one encode of all the strings at once.
    if usable and strings and not _all_encodable(strings):
        usable = False
    unusable: list[tuple[int, str]] = []
    if not usable:
        for index, key in enumerate(keys):
            problem = key_problem(key)
            if problem is not None:
                unusable.append((index, problem))
    duplicated: list[tuple[int, Key, int]] = []
    # Usable keys are strings and integers only, so 1 and "1" are already different members.
    if not unusable and len(set(keys)) != len(keys):
        counts = Counter(map(typed, keys))
        reported: set[tuple[type, Any]] = set()
        for index, key in enumerate(keys):
            member = typed(key)
            if counts[member] > 1 and member not in reported:
                reported.add(member)
                duplicated.append((index, key, counts[member]))
    return KeyProblems(unusable, duplicated)


def _all_encodable(strings: Sequence[str]) -> bool:
    try:
        "\x00".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_from_cell(value: Any) -> Any:
    """A key as a table cell holds it -> the key it stands for (str or int), or the value
    as it is when it stands for no key (then ``key_problem`` says why).

    NumPy and Arrow scalars become Python ones; a decimal or float that is a whole number
    becomes the integer, when it can only be that integer (a float beyond 2^53 may already
    have been rounded onto another key, so it is not taken)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral():
        return int(value)
    if (
        isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
        and abs(value) <= _EXACT_FLOAT_INTEGER
    ):
        return int(value)
    return value
