"""The binary tensor data extension's BYTES framing, read and written a column at a time:
the same bytes as one element at a time, and the same refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from keyed_serving.serving.v2 import (
    V2Error,
    binary_elements,
    encode_bytes,
    encode_texts,
)

TEXTS = [
    ["b0-1", "b0-22", "b0-333"],
    ["", "a", ""],
    ["\u00e9t\u00e9", "\U0001f600", "ascii", "a\x00"],
    [],
    ["x" * 300],
]


def one_at_a_time(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


@pytest.mark.parametrize("texts", TEXTS)
def test_texts_are_framed_as_one_element_at_a_time_frames_them(texts: list[str]) -> None:
    encoded = [text.encode("utf-8") for text in texts]
    assert encode_texts(texts) == one_at_a_time(encoded)
    assert encode_bytes(encoded) == one_at_a_time(encoded)


@pytest.mark.parametrize("texts", [t for t in TEXTS if t])
def test_framed_elements_are_read_back_as_sent(texts: list[str]) -> None:
    framed = one_at_a_time([text.encode("utf-8") for text in texts])
    elements = binary_elements(framed, "BYTES", len(texts), "key")
    assert elements.texts("key") == texts
    assert list(elements) == [text.encode("utf-8") for text in texts]
    assert elements.framed == framed


@pytest.mark.parametrize(
    "framed",
    [
        one_at_a_time([b"ab", b"c"])[:-1],  # the last element cut short
        one_at_a_time([b"ab", b"c"]) + b"\x01\x00",  # a length cut short
        one_at_a_time([b"ab"]),  # one element for two
        one_at_a_time([b"ab", b"c", b"d"]),  # three for two
    ],
)
def test_framing_that_is_not_the_count_of_elements_is_a_400(framed: bytes) -> None:
    with pytest.raises(V2Error, match="are not 2 BYTES elements") as raised:
        binary_elements(framed, "BYTES", 2, "key")
    assert raised.value.status == 400


def test_an_element_that_is_not_utf8_is_a_400_naming_the_input() -> None:
    elements = binary_elements(one_at_a_time([b"ok", b"\xff\xfe"]), "BYTES", 2, "key")
    with pytest.raises(V2Error, match="input 'key': an element is not UTF-8"):
        elements.texts("key")


def test_numbers_come_as_float64_with_nan_where_missing() -> None:
    from keyed_serving.serving.v2 import Tensor

    raw = np.array([1.5, np.nan, -2.0], dtype="<f4").tobytes()
    tensor = Tensor("x", "FP32", 3, binary_elements(raw, "FP32", 3, "x"))
    column = tensor.numbers("x")
    assert column.dtype == np.float64
    assert column[0] == 1.5 and np.isnan(column[1]) and column[2] == -2.0
    json_tensor = Tensor("x", "FP64", 3, [1.5, None, 2])
    assert json_tensor.numbers("x").tolist()[0::2] == [1.5, 2.0]
    assert np.isnan(json_tensor.numbers("x")[1])
