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

import array
import decimal
import functools
import itertools
import math
import operator
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from keyed_serving.lazy import numpy as np

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
    duplicated ones (each with its first position and its count). ``column``: the keys
    packed as the runner hop carries them, made by the same passes that checked them (None
    where some key is unusable, or keys of both kinds are mixed)."""

    unusable: list[tuple[int, str]]
    duplicated: list[tuple[int, Key, int]]
    column: KeyColumn | None = None

    def __bool__(self) -> bool:
        return bool(self.unusable or self.duplicated)


def find_key_problems(keys: Sequence[Any]) -> KeyProblems:
    """Unusable and duplicated keys. Keys that are all usable are checked in a few passes
    in C (types, string lengths, integer bounds, one set or one sort); a row-by-row look
    happens only where those find something. Keys of one kind come back packed
    (``column``): the text of string keys is joined and encoded once, for the checks and
    the hop alike. Keys cut from a body's JSON (``KeyColumn.from_json``, which judged
    each usable) are only looked at for duplicates, and come back as they are."""
    if isinstance(keys, KeyColumn):
        if keys.usable:
            return KeyProblems([], _duplicated(keys, keys), keys)
        keys = keys.tolist()
    column: KeyColumn | None = None
    texts = _joined_text(keys)
    if texts is not None:  # every key a str: the join that packs them told
        joined, json_text = texts
        packed = _packed_text(keys, joined)
        usable = packed is not None  # else a lone surrogate (found row by row below)
        if packed is not None:
            column, lengths = packed
            column.json = json_text
            if lengths is None:  # text beyond ASCII: a character is not a byte
                lengths = (min(map(len, keys)), max(map(len, keys)))
            usable = lengths[0] > 0 and lengths[1] <= MAX_KEY_LENGTH
    else:
        kinds = set(map(type, keys))
        usable = kinds <= {str, int}
        if usable and kinds == {int}:
            try:  # the conversion itself refuses an integer beyond 64 bits
                column = KeyColumn("int", np.array(keys, dtype=np.int64).tobytes())
            except OverflowError:
                usable = False
        elif usable and kinds:  # strings, and integers or a lone surrogate (see above)
            strings = [key for key in keys if type(key) is str]
            lengths_of = list(map(len, strings))
            integers = [key for key in keys if type(key) is int] or [0]
            usable = (
                min(lengths_of) > 0
                and max(lengths_of) <= MAX_KEY_LENGTH
                and min(integers) >= MIN_INTEGER_KEY
                and max(integers) <= MAX_INTEGER_KEY
                # A lone surrogate can only come from a reader more lenient than orjson
                # (Python's json, a DataFrame); it is looked for by one encode of them all.
                and _all_encodable(strings)
            )
    unusable: list[tuple[int, str]] = []
    if not usable:
        column = None
        for index, key in enumerate(keys):
            problem = key_problem(key)
            if problem is not None:
                unusable.append((index, problem))
    duplicated = [] if unusable else _duplicated(keys, column)
    return KeyProblems(unusable, duplicated, column)


def _duplicated(keys: Sequence[Any], column: KeyColumn | None) -> list[tuple[int, Key, int]]:
    """Each usable key sent more than once: its first position, the key and its count."""
    duplicated: list[tuple[int, Key, int]] = []
    # Usable keys are strings and integers only, so 1 and "1" are already different members.
    if _has_duplicates(keys, column):
        keys = keys.tolist() if isinstance(keys, KeyColumn) else keys  # a rare look, once
        counts = Counter(map(typed, keys))
        reported: set[tuple[type, Any]] = set()
        for index, key in enumerate(keys):
            member = typed(key)
            if counts[member] > 1 and member not in reported:
                reported.add(member)
                duplicated.append((index, key, counts[member]))
    return duplicated


def _has_duplicates(keys: Sequence[Any], column: KeyColumn | None) -> bool:
    """Whether some key is sent twice. Many keys that fit in 64 bits each (see
    ``KeyColumn.words``) are sorted as numbers, exactly: at 10,000 keys of up to 8
    characters that is 96 us, where a set of them takes 224 (measured; most of the set's
    time is filling its table, resized six times on the way). Others go into a set.
    Which keys are duplicated, and how often, is then counted by the keys themselves
    (find_key_problems)."""
    words = column.words() if column is not None and len(keys) >= _FEW_KEYS else None
    if words is None:
        return len(set(keys)) != len(keys)
    words.sort()
    return bool((words[1:] == words[:-1]).any())


@functools.cache
def _low_bytes() -> np.ndarray:
    """Masks that keep the first 0..8 bytes of a little-endian 64-bit word."""
    return np.array([(1 << (8 * width)) - 1 for width in range(9)], dtype=np.uint64)


# Below this many keys, plain Python finds where keys end faster than NumPy's fixed cost
# per call (measured: NumPy's way costs more up to about 200 keys, a third at 10,000).
_FEW_KEYS = 200
# Between keys in a packed column's text (see KeyColumn): a NUL where they were joined,
# the comma (and space) and quotes between two strings where they were cut from a JSON
# array.
_SEPARATOR = "\x00"
_JSON_SEPARATORS = (b'","', b'", "')  # compact, and as Python's json writes it


def _joined_text(keys: Sequence[Any]) -> tuple[str, bytes] | None:
    """The keys joined by the separator, and their JSON text, when every one is a ``str``
    (a subclass is not a key as sent: it is judged row by row), else None. The join refuses
    anything but text at the first other key; orjson, told to pass subclasses through,
    refuses a subclass of ``str`` (and a lone surrogate, found row by row then). That JSON
    text is what a columnar answer writes for these keys (``KeyColumn.json``): making it
    costs a third of counting the keys' types, which it replaces (measured at 10,000)."""
    if not keys:
        return None
    try:
        joined = _SEPARATOR.join(keys)
        text = orjson.dumps(keys, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except TypeError:  # orjson's JSONEncodeError is one
        return None
    return joined, text


def _packed_text(
    keys: Sequence[str], joined: str
) -> tuple[KeyColumn, tuple[int, int] | None] | None:
    """String keys (``joined``: them joined by the separator) as a ``KeyColumn``, and the
    shortest and longest key's length when the text is ASCII (bytes are characters; else
    None). None for a key that is not valid Unicode (a lone surrogate).

    The text is encoded once, separators and all. Where each key ends is where the
    separators are, found in one pass in C; a key that holds a NUL itself moves them, and
    then the ends are counted key by key instead."""
    try:
        encoded = joined.encode("utf-8")
    except UnicodeEncodeError:
        return None
    ascii_text = len(encoded) == len(joined)  # a character is a byte
    n = len(keys)
    if n >= _FEW_KEYS:
        separators = np.flatnonzero(np.frombuffer(encoded, dtype=np.uint8) == 0)
        if len(separators) == n - 1:
            ends = np.empty(n, dtype=np.int64)
            ends[:-1], ends[-1] = separators, len(encoded)
            column = KeyColumn("str", encoded, ends.tobytes(), nul_free=True)
            if not ascii_text:
                return column, None
            widths = _widths(ends)
            return column, (int(widths.min()), int(widths.max()))
    lengths = list(map(len, keys)) if ascii_text else [len(key.encode("utf-8")) for key in keys]
    # A key ends where the lengths up to it and a separator per key before it do.
    ends_ = map(operator.add, itertools.accumulate(lengths), range(n))
    column = KeyColumn("str", encoded, array.array("q", ends_).tobytes())
    return column, (min(lengths), max(lengths)) if ascii_text else None


def _widths(ends: np.ndarray, gap: int = 1) -> np.ndarray:
    """Each key's length in bytes, from where the keys end in a packed text (a separator
    of ``gap`` bytes between two keys)."""
    widths = ends.copy()
    widths[1:] -= ends[:-1] + gap
    return widths


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


class KeyColumn(Sequence[Any]):
    """Keys as the runner hop carries them: a few buffers, not a Python object per key.

    The hop pickles what it sends (BentoML's own format); an object array of 10,000 keys
    pickles an object per key there and back (measured 3.5 ms of a W3 request, with the
    array's making). Here integer keys are one buffer of int64, string keys one buffer of
    UTF-8 text and one of int64 ends (where each key ends in the text; the next starts
    after a separator: the NUL that one join put between each two keys, or the ``","``
    between them in the JSON array they were cut from, see ``from_json``); keys of both
    kinds in one block stay an object array. A key's type survives: ``tolist()`` gives
    back ``1`` and ``"1"`` as they were sent. ``same_as`` compares two columns key by key
    and type by type: one comparison of bytes where both hold keys of one kind and
    layout."""

    __slots__ = ("_data", "_ends", "_kind", "_nul_free", "_separator", "_size", "json")

    def __init__(
        self,
        kind: str,
        data: Any,
        ends: bytes | None = None,
        separator: bytes = b"\x00",
        *,
        nul_free: bool = False,
    ) -> None:
        self._kind, self._data, self._ends = kind, data, ends
        self._separator = separator
        # String keys known to hold no NUL of their own (the packing counted the
        # separators, or from_json saw only printable text); else ``words`` counts them.
        # Not sent over the hop.
        self._nul_free = nul_free
        self._size = len(data) // 8 if kind == "int" else len(ends) // 8 if ends else len(data)
        # The keys as a JSON array, where the checks that packed them wrote it (string keys
        # from find_key_problems) or they were cut from it (from_json): an answer writes
        # them as they are. Not sent over the hop.
        self.json: bytes | None = None

    @classmethod
    def from_json(cls, text: bytes) -> KeyColumn | None:
        """String keys cut from the JSON text of an array of them, with no Python string
        made per key: where ``text`` is exactly ``["k1","k2",...]``, or ``["k1", "k2",
        ...]`` as Python's own JSON writer spaces it (no other space, no escape, printable
        ASCII only), and holds at least ``_FEW_KEYS`` keys, each a usable one. None
        otherwise; the caller then reads the text as JSON, as it would have.

        In such a text every quote starts or ends a string (a quote inside one would need
        a backslash), so the quotes tell where the keys are: the text holds the keys
        exactly as they are read when its only quotes are the two at its ends and the two
        of each ``","`` (or ``", "``) between keys, all different ones. Nothing inside
        them is then anything JSON would escape or read otherwise, and nothing outside
        them but the brackets and the separators. The text is kept as it is: its keys
        stand apart by that separator, and it is the keys' JSON text (``json``)."""
        if text[:2] != b'["' or text[-2:] != b'"]' or b"\\" in text:
            return None
        codes = np.frombuffer(text, dtype=np.uint8)
        if int(codes.min()) < 0x20 or int(codes.max()) > 0x7E:  # a control or non-ASCII byte
            return None
        first_end = text.find(b'"', 2)
        separator = _JSON_SEPARATORS[text[first_end + 1 : first_end + 3] == b", "]
        width = len(separator)
        quotes = codes == ord('"')
        # Where each separator starts; built in place (a body may be large).
        starts = quotes[: len(codes) - width + 1].copy()
        for offset in range(1, width):
            starts &= codes[offset : len(codes) - width + 1 + offset] == separator[offset]
        between = np.flatnonzero(starts)
        n = len(between) + 1
        if n < _FEW_KEYS or np.count_nonzero(quotes) != 2 * n:  # a quote shared or elsewhere
            return None
        # In text[2:-2] a key ends where its closing quote was, two bytes earlier.
        ends = np.empty(n, dtype=np.int64)
        ends[:-1], ends[-1] = between - 2, len(text) - 4
        widths = _widths(ends, width)
        if int(widths.min()) < 1 or int(widths.max()) > MAX_KEY_LENGTH:
            return None
        column = cls("str", text[2:-2], ends.tobytes(), separator, nul_free=True)
        column.json = text
        return column

    @property
    def usable(self) -> bool:
        """Every key known to be a usable one: the keys were cut from JSON (their separator
        says so, here or after the hop), and ``from_json`` cuts only usable keys."""
        return self._separator in _JSON_SEPARATORS

    @classmethod
    def of(cls, keys: Any) -> KeyColumn:
        """Keys as a column: a ``KeyColumn`` as it is, or a list or array of keys packed."""
        if isinstance(keys, KeyColumn):
            return keys
        return cls.pack(keys.tolist() if isinstance(keys, np.ndarray) else list(keys))

    @classmethod
    def pack(cls, keys: Sequence[Any]) -> KeyColumn:
        kinds = set(map(type, keys))
        if kinds == {int}:
            try:
                return cls("int", np.array(keys, dtype=np.int64).tobytes())
            except OverflowError:  # beyond 64 bits: not a key, but kept as sent
                pass
        elif kinds == {str}:
            packed = _packed_text(keys, _SEPARATOR.join(keys))
            if packed is not None:  # else a lone surrogate: not a key, but kept as sent
                return packed[0]
        objects = np.empty(len(keys), dtype=object)
        objects[:] = keys
        return cls("object", objects)

    @property
    def kind(self) -> str:
        """int, str or object (keys of several types, each as sent)."""
        return self._kind

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: Any) -> Any:
        """One key (as sent) at an integer position; a column of the keys at a slice or an
        array of positions."""
        if isinstance(index, int | np.integer):
            return self._key(int(index))
        if isinstance(index, slice) and index.step in (None, 1):
            return self._rows(*index.indices(self._size)[:2])
        return KeyColumn.pack(np.asarray(self.tolist(), dtype=object)[index].tolist())

    def _rows(self, start: int, end: int) -> KeyColumn:
        """The keys from ``start`` to ``end``, cut from the buffers as they are."""
        end = max(start, end)
        if start == 0 and end == self._size:
            return self  # immutable: the whole column is itself
        if self._kind == "int":
            return KeyColumn("int", self._data[8 * start : 8 * end])
        if self._kind == "str":
            all_ends = np.frombuffer(self._ends, dtype=np.int64)  # type: ignore[arg-type]
            first = int(all_ends[start - 1]) + len(self._separator) if start else 0
            ends = all_ends[start:end]
            last = int(ends[-1]) if len(ends) else first
            text: bytes = self._data
            cut_ends = (ends - first).tobytes()
            return KeyColumn(
                "str",
                text[first:last],
                cut_ends,
                self._separator,
                nul_free=self._nul_free,
            )
        return KeyColumn("object", self._data[start:end])

    def _key(self, index: int) -> Any:
        """One key, read where it lies (a model error names its key: a block of 5,000 rows
        all raising must not decode the whole column 5,000 times)."""
        if not -self._size <= index < self._size:
            raise IndexError(f"key {index} of {self._size}")
        index %= self._size
        if self._kind == "int":
            return int(np.frombuffer(self._data, dtype=np.int64)[index])
        if self._kind == "str":
            ends = np.frombuffer(self._ends, dtype=np.int64)  # type: ignore[arg-type]
            start = int(ends[index - 1]) + len(self._separator) if index else 0
            text: bytes = self._data
            return text[start : int(ends[index])].decode("utf-8")
        return self._data[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist())

    def tolist(self) -> list[Any]:
        if self._kind == "int":
            return list(np.frombuffer(self._data, dtype=np.int64).tolist())
        if self._kind == "str":
            text: bytes = self._data
            decoded = text.decode("utf-8")
            # One split, where the separator is found only between keys (a fifth of the
            # slicing's time): a NUL, whose count says so; the JSON separators hold a quote,
            # which no key cut from JSON (the only columns they separate) holds.
            parts = decoded.split(self._separator.decode("utf-8")) if self._size else []
            if len(parts) == self._size:
                return parts
            ends = np.frombuffer(self._ends, dtype=np.int64).tolist()  # type: ignore[arg-type]
            gap = len(self._separator)
            starts = [0, *(end + gap for end in ends)][: len(ends)]
            if len(decoded) == len(text):  # ASCII: slices of one decoded string
                return [decoded[a:b] for a, b in zip(starts, ends, strict=True)]
            return [text[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]
        return list(self._data.tolist())

    def words(self) -> np.ndarray | None:
        """Each key as one 64-bit number, which no other key has: an integer key as it is,
        a string key of at most 8 bytes of UTF-8 as those bytes, zero after its end (a
        fresh array). None where some key does not fit, or where a key holds a NUL (it could
        then end in a zero of the padding), or for keys of both kinds."""
        if self._kind == "int":
            return np.frombuffer(self._data, dtype=np.int64).copy()
        if self._kind != "str" or not self._size:
            return None
        text: bytes = self._data
        separators = (self._size - 1) * self._separator.count(0)
        if not self._nul_free and text.count(0) != separators:  # a NUL of a key's own
            return None
        ends = np.frombuffer(self._ends, dtype=np.int64)  # type: ignore[arg-type]
        widths = _widths(ends, len(self._separator))
        if int(widths.max()) > 8:
            return None
        starts = ends - widths
        # Eight bytes read at each key's start (a view at every byte of the text, padded),
        # then the bytes past the key's end set to zero.
        padded = np.frombuffer(text + bytes(8), dtype=np.uint8)
        at_every_byte = np.ndarray((len(text) + 1,), dtype="<u8", buffer=padded, strides=(1,))
        return at_every_byte[starts] & _low_bytes()[widths]

    def same_as(self, other: KeyColumn) -> bool:
        """The same keys, of the same types, in the same order."""
        if self._kind == other._kind != "object" and self._separator == other._separator:
            return self._data == other._data and self._ends == other._ends
        mine, theirs = self.tolist(), other.tolist()
        return mine == theirs and list(map(type, mine)) == list(map(type, theirs))

    def __reduce__(self) -> tuple[Any, ...]:
        return (KeyColumn, (self._kind, self._data, self._ends, self._separator))

    def __repr__(self) -> str:
        return f"KeyColumn({self._kind}, {self._size} keys)"
