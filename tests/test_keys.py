"""The one definition of a key, as every path (server, client, files, Spark) applies it."""

from __future__ import annotations

import decimal
import json
import pickle
import pickletools
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import byte_edits, edited

from keyed_serving.keys import (
    MAX_INTEGER_KEY,
    MIN_INTEGER_KEY,
    KeyColumn,
    KeyProblems,
    find_key_problems,
    key_from_cell,
    key_problem,
)


@pytest.mark.parametrize(
    "key", ["a", "x" * 256, 0, MAX_INTEGER_KEY, MIN_INTEGER_KEY, "\u00e9\U0001f600"]
)
def test_usable_keys_have_no_problem(key: object) -> None:
    assert key_problem(key) is None
    assert not find_key_problems([key])


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("", "empty"),
        ("x" * 257, "257 characters"),
        ("\ud800", "surrogate"),
        (MAX_INTEGER_KEY + 1, "as strings"),
        (MIN_INTEGER_KEY - 1, "as strings"),
        (1.8446744073709552e19, "as strings"),  # orjson's reading of 2**64
        (True, "boolean"),
        (None, "missing"),
        (1.5, "float"),
        ([1], "list"),
    ],
)
def test_unusable_keys_say_why(key: object, said: str) -> None:
    problem = key_problem(key)
    assert problem is not None and said in problem
    assert find_key_problems(["ok", key]).unusable == [(1, problem)]


def test_one_bad_key_among_many_is_found_by_position() -> None:
    keys: list[object] = list(range(1000))
    keys[617] = 2**64
    assert [index for index, _ in find_key_problems(keys).unusable] == [617]
    strings: list[object] = [f"k{i}" for i in range(1000)]
    strings[3] = "bad \udc00"
    assert [index for index, _ in find_key_problems(strings).unusable] == [3]


def test_duplicates_are_judged_with_their_type() -> None:
    assert not find_key_problems([1, "1", 2])
    problems = find_key_problems(["a", 7, "b", 7, 7, "a"])
    assert problems.duplicated == [(0, "a", 2), (1, 7, 3)]


@pytest.mark.parametrize(
    ("cell", "key"),
    [
        (np.int64(2**53 + 1), 2**53 + 1),
        (decimal.Decimal("42"), 42),
        (decimal.Decimal("42.000"), 42),
        (7.0, 7),
        ("007", "007"),
    ],
)
def test_table_cells_become_the_keys_they_stand_for(cell: object, key: object) -> None:
    taken = key_from_cell(cell)
    assert taken == key and type(taken) is type(key)


@pytest.mark.parametrize("cell", [float(2**53 + 2), decimal.Decimal("4.5"), float("nan"), 2.5])
def test_cells_that_may_stand_for_another_key_are_not_taken(cell: object) -> None:
    assert key_problem(key_from_cell(cell)) is not None


@pytest.mark.parametrize(
    "keys",
    [
        [0, 1, MAX_INTEGER_KEY, MIN_INTEGER_KEY],
        ["a", "b-17", "x" * 256],
        ["\u00e9", "\U0001f600 smile", "plain", "a\x00", "\x00"],
        ["1", 1, "2", 2],
    ],
    ids=["integers", "ascii", "unicode-and-nul", "mixed"],
)
def test_a_key_column_gives_back_every_key_with_its_type_after_the_hop(keys: list) -> None:
    column = pickle.loads(pickle.dumps(KeyColumn.pack(keys), protocol=5))
    back = column.tolist()
    assert back == keys and [type(k) for k in back] == [type(k) for k in keys]
    assert [column[i] for i in range(len(keys))] == keys
    assert [type(column[i]) for i in range(len(keys))] == [type(k) for k in keys]
    assert len(column) == len(keys)
    assert column.same_as(KeyColumn.pack(list(keys)))


@pytest.mark.parametrize("kind", ["int", "str"])
def test_a_key_column_of_one_type_pickles_as_a_few_buffers_not_an_object_per_key(
    kind: str,
) -> None:
    keys = list(range(10_000)) if kind == "int" else [f"b0-{i}" for i in range(10_000)]
    column = KeyColumn.pack(keys)
    assert column.kind == kind
    opcodes = sum(1 for _ in pickletools.genops(pickle.dumps(column, protocol=5)))
    assert opcodes < 100  # an object array pickles an opcode or more per key


def test_key_columns_of_equal_digits_but_other_types_are_not_the_same() -> None:
    assert not KeyColumn.pack([1, 2]).same_as(KeyColumn.pack(["1", "2"]))
    assert not KeyColumn.pack(["1", "2"]).same_as(KeyColumn.pack([1, 2]))
    assert not KeyColumn.pack(["a", "bc"]).same_as(KeyColumn.pack(["ab", "c"]))
    assert not KeyColumn.pack(["a", 1]).same_as(KeyColumn.pack(["a", True]))
    assert KeyColumn.pack(["a", 1]).same_as(KeyColumn.of(np.array(["a", 1], dtype=object)))


@pytest.mark.parametrize(
    "keys",
    [[7, -2, 2**63 - 1], ["a", "é€", "", "z"], [1, "1", 2], [2**70, 3]],
    ids=["int", "str", "mixed", "beyond 64 bits"],
)
def test_a_key_column_gives_each_key_as_sent_at_its_position(keys: list[Any]) -> None:
    column = KeyColumn.pack(keys)
    for index in [*range(len(keys)), -1, -len(keys)]:
        key = column[index]
        assert key == keys[index] and type(key) is type(keys[index])
    with pytest.raises(IndexError):
        column[len(keys)]


_CHARACTERS = st.sampled_from(["a", "Z", "0", "-", "\x00", "\u00e9", "\u5b57", "\U0001f600"])
_TEXT = st.text(_CHARACTERS, max_size=4)
_KEY_LISTS = st.one_of(
    # Either side of the 200 keys where packing turns to NumPy.
    st.lists(_TEXT, max_size=60),
    st.lists(st.text(_CHARACTERS, min_size=1, max_size=3), min_size=200, max_size=450),
    st.lists(st.text(st.sampled_from("ab-\u00e9"), max_size=3), min_size=200, max_size=450),
    st.lists(st.text(st.sampled_from("ab-"), max_size=3), min_size=200, max_size=450),
    st.lists(st.integers(-(2**64), 2**64), max_size=450),
    st.lists(st.one_of(_TEXT, st.integers(-5, 5)), max_size=60),
    st.lists(st.just("k" * 257), min_size=1, max_size=250),
)


@settings(max_examples=300, deadline=None)
@given(keys=_KEY_LISTS, cut=st.tuples(st.integers(0, 450), st.integers(0, 450)))
def test_the_checks_judge_and_pack_keys_as_one_key_at_a_time_would(
    keys: list[Any], cut: tuple[int, int]
) -> None:
    """find_key_problems packs the keys it checked (the hop's column, made once): its
    verdict is key_problem's for each key, its column gives every key back with its type,
    and any run of it is the column of that run of keys."""
    problems = find_key_problems(keys)
    assert [index for index, _ in problems.unusable] == [
        index for index, key in enumerate(keys) if key_problem(key) is not None
    ]
    if problems.unusable or len({type(key) for key in keys}) != 1:  # none, or both kinds
        assert problems.column is None
        return
    column = problems.column
    assert column is not None and len(column) == len(keys)
    assert column.tolist() == keys and column.same_as(KeyColumn.pack(keys))
    # String keys carry their JSON text, as orjson writes them (an answer repeats it).
    assert column.json == (orjson.dumps(keys) if type(keys[0]) is str else None)
    start, end = cut
    run = column[start:end]
    assert run.tolist() == keys[start:end] and len(run) == len(keys[start:end])
    assert run.same_as(KeyColumn.pack(keys[start:end])) or not keys[start:end]


@pytest.mark.parametrize("count", [1, 300])
def test_a_subclass_of_str_is_not_a_key_as_sent(count: int) -> None:
    """Judged row by row (it may hash and compare as it likes), on both sides of the
    packing's size switch."""

    class Named(str):
        pass

    keys: list[Any] = [f"k{i}" for i in range(count)]
    keys[count // 2] = Named(keys[count // 2])
    problems = find_key_problems(keys)
    assert [index for index, _ in problems.unusable] == [count // 2]
    assert problems.column is None


# Short and long in UTF-8 (1 to 4 bytes a character, so either side of the 8 bytes below
# which keys are told apart as numbers), with and without a NUL.
_SHORT_AND_LONG = st.text(
    st.sampled_from(["a", "b", "0", "-", "\x00", "\u00e9", "\u5b57", "\U0001f600"]),
    min_size=1,
    max_size=9,
)
_UNIQUE_KEYS = st.one_of(
    st.lists(_SHORT_AND_LONG, min_size=1, max_size=400, unique=True),
    st.lists(
        st.text(st.sampled_from("ab-0"), min_size=1, max_size=8),
        min_size=200,
        max_size=400,
        unique=True,
    ),
    st.lists(st.integers(MIN_INTEGER_KEY, MAX_INTEGER_KEY), min_size=1, max_size=400, unique=True),
)


@settings(max_examples=300, deadline=None)
@given(keys=_UNIQUE_KEYS, copy=st.none() | st.tuples(st.integers(0), st.integers(0)))
def test_a_key_sent_twice_is_found_however_its_keys_are_told_apart(
    keys: list[Any], copy: tuple[int, int] | None
) -> None:
    """Keys each sent once pass; one of them sent again anywhere is reported, with its
    first position and its count, for a few keys or many, short or long, text or integers."""
    if copy is None:
        assert not find_key_problems(keys)
        return
    which, where = copy
    key = keys[which % len(keys)]
    keys.insert(where % (len(keys) + 1), key)
    problems = find_key_problems(keys)
    assert not problems.unusable
    assert problems.duplicated == [(keys.index(key), key, 2)]


def test_many_short_keys_with_one_sent_again_at_the_end() -> None:
    """The benchmark's shape (10,000 keys of up to 7 characters), one repeated last, and
    8-byte keys that differ only in their last byte or their length."""
    keys: list[Any] = [f"b3-{i}" for i in range(10_000)]
    assert not find_key_problems(keys)
    assert find_key_problems([*keys, "b3-5"]).duplicated == [(5, "b3-5", 2)]
    eight = [f"{i:07d}{c}" for i in range(100) for c in "ab"] + [f"{i:07d}" for i in range(100)]
    assert not find_key_problems(eight)
    assert find_key_problems([*eight, "0000042b"]).duplicated == [(85, "0000042b", 2)]
    # A key that ends in a NUL of its own is not the key without it.
    assert not find_key_problems([f"k{i}" for i in range(300)] + ["k1\x00"])


@pytest.mark.parametrize(
    ("keys", "fits"),
    [
        ([f"k{i}" for i in range(300)], True),
        (["\u00e9" * 4, "\u00e9" * 3, "\u00e9\u00e9a"], True),  # 8, 6 and 5 bytes
        (["\u00e9" * 4 + "a", "b"], False),  # 9 bytes
        (["a\x00", "a"], False),  # a NUL of its own could meet the padding
        ([2, -1, MAX_INTEGER_KEY, MIN_INTEGER_KEY], True),
        ([1, "1"], False),
    ],
    ids=["ascii", "8-bytes-utf8", "9-bytes", "nul", "integers", "both-kinds"],
)
def test_keys_that_fit_in_64_bits_get_a_number_no_other_key_has(
    keys: list[Any], fits: bool
) -> None:
    words = KeyColumn.pack(keys).words()
    if not fits:
        assert words is None
        return
    assert words is not None and len(words) == len(keys)
    assert len(np.unique(words)) == len(keys)


# Keys cut from a request's JSON text (KeyColumn.from_json): the ones it can take, and the
# ones JSON writes otherwise or that are no keys, which must send it back to orjson.
_PLAIN = st.text(st.sampled_from("ab-_0:/ ~{}"), min_size=1, max_size=12)
_AWKWARD = st.one_of(
    _PLAIN,
    st.sampled_from(["", "k" * 256, "k" * 257, "]", '"', "\\", ",", '","', "\x1f", "\x7f"]),
    st.text(st.sampled_from(["a", '"', "\\", "]", "[", ",", " ", "\x00", "\u00e9"]), max_size=4),
)


def _plain(key: str, spaced: bool) -> bool:
    """A key from_json cuts: printable ASCII JSON writes as it is, and not one that looks
    like the separator between two keys once between its quotes (a lone comma in a
    compact text, a comma and a space in a spaced one: left to orjson)."""
    printable = all(" " <= c <= "~" and c not in '"\\' for c in key)
    return 0 < len(key) <= 256 and printable and key != (", " if spaced else ",")


@settings(max_examples=300, deadline=None)
@given(
    fresh=st.integers(0, 260),
    awkward=st.lists(st.tuples(st.integers(0), _AWKWARD), max_size=4),
    spaced=st.booleans(),
)
def test_keys_cut_from_a_json_array_are_the_keys_orjson_reads_from_it(
    fresh: int, awkward: list[tuple[int, str]], spaced: bool
) -> None:
    """Cut where the text is the array of at least 200 printable keys that JSON writes as
    they are, compact or spaced as Python's json writes it; not cut (None: read by orjson)
    for anything else. Cut, they are exactly the keys, their JSON text is the text, and
    the checks judge them as they judge the keys read."""
    keys = [f"r{i}" for i in range(fresh)]
    for where, key in awkward:
        keys.insert(where % (len(keys) + 1), key)
    text = json.dumps(keys, ensure_ascii=False).encode() if spaced else orjson.dumps(keys)
    column = KeyColumn.from_json(text)
    if len(keys) < 200 or not all(_plain(key, spaced) for key in keys):
        assert column is None
        return
    assert column is not None and column.usable
    assert column.tolist() == orjson.loads(text) == keys and column.json == text
    assert [column[i] for i in (0, len(keys) // 2, -1)] == [keys[0], keys[len(keys) // 2], keys[-1]]
    read = find_key_problems(keys)
    assert find_key_problems(column) == KeyProblems(read.unusable, read.duplicated, column)


_BYTES = [b'"', b",", b"]", b"[", b"\\", b" ", b"a", b"\x00", b"\xc3", b"\n"]


@settings(max_examples=500, deadline=None)
@given(edits=byte_edits(st.integers(0, 2_000), _BYTES), spaced=st.booleans())
def test_a_json_array_of_keys_changed_anywhere_is_cut_as_orjson_reads_it_or_not_at_all(
    edits: list[tuple[int, str, bytes]], spaced: bool
) -> None:
    """A fuzzer's array: wherever bytes are put, inserted or dropped, what is cut is what
    orjson reads, and orjson reads it; else it is not cut."""
    keys = [f"k{i}" for i in range(210)]
    text = edited(json.dumps(keys).encode() if spaced else orjson.dumps(keys), edits)
    column = KeyColumn.from_json(text)
    if column is not None:
        assert column.tolist() == orjson.loads(text)


def test_a_column_cut_from_json_crosses_the_hop_and_is_cut_like_a_joined_one() -> None:
    """Its keys stand apart by the JSON's `","`, not a NUL: over the hop, in runs, key by
    key and as numbers it is the column of the same keys joined."""
    keys = [f"b3-{i}" for i in range(1_000)] + ["k" * 20]
    cut = KeyColumn.from_json(orjson.dumps(keys))
    joined = KeyColumn.pack(keys)
    assert cut is not None
    back = pickle.loads(pickle.dumps(cut, protocol=5))
    assert back.tolist() == keys and back.same_as(cut) and back.same_as(joined)
    assert joined.same_as(back) and not back.same_as(KeyColumn.pack(keys[::-1]))
    for start, end in ((0, 0), (0, 1), (5, 700), (999, 1_001), (1_000, 1_001)):
        run = pickle.loads(pickle.dumps(back[start:end]))
        assert run.tolist() == keys[start:end] and run.same_as(joined[start:end])
    short = KeyColumn.from_json(orjson.dumps(keys[:1_000]))
    words = short.words() if short is not None else None
    assert words is not None
    assert np.array_equal(words, KeyColumn.pack(keys[:1_000]).words())


def test_a_column_cut_from_json_is_known_usable_after_the_hop_and_a_joined_one_is_not() -> None:
    """The verdict travels with the layout: a cut column and its runs stay judged (the
    checks do not look at their keys again), a joined column is judged by its keys."""
    keys = [f"k{i}" for i in range(300)]
    cut = KeyColumn.from_json(orjson.dumps(keys))
    assert cut is not None and cut.usable and cut[10:20].usable
    assert pickle.loads(pickle.dumps(cut)).usable
    assert not KeyColumn.pack(keys).usable and not KeyColumn.pack([*keys, ""]).usable
    assert [i for i, _ in find_key_problems(KeyColumn.pack([*keys, ""])).unusable] == [300]
