"""POST /labels: the body read into label rows and refusals, and the route in-process."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from keyed_serving.capture import layout
from keyed_serving.capture.labels import InvalidLabels, read_labels, write_labels
from keyed_serving.keys import RULE


def read(labels: list[Any], task: str = "classification") -> Any:
    return read_labels({"labels": labels}, task, max_labels=100)


@pytest.mark.parametrize(
    ("label", "kept"),
    [("yes", "yes"), (1, "1"), (1.0, "1"), ("1", "1"), (True, "true"), (2.5, "2.5")],
)
def test_a_classifiers_label_is_kept_as_its_class_text(label: Any, kept: str) -> None:
    rows = read([{"key": "a", "label": label}])
    assert rows.labels == [kept] and rows.accepted == 1


@pytest.mark.parametrize("label", [None, [1], {"a": 1}, float("nan")])
def test_a_classifiers_label_must_be_a_scalar(label: Any) -> None:
    rows = read([{"key": "a", "label": label}])
    assert rows.accepted == 0 and rows.refused == {"invalid_label": 1}


@pytest.mark.parametrize(
    ("label", "kept"), [(1, "1.0"), (2.5, "2.5"), (-0.1, "-0.1"), (10**20, "1e+20")]
)
def test_a_regressors_label_is_a_finite_number(label: Any, kept: str) -> None:
    assert read([{"key": 1, "label": label}], "regression").labels == [kept]


@pytest.mark.parametrize("label", [True, "2.5", None, float("inf"), 10**400])
def test_a_regressors_label_that_is_not_a_finite_number_is_refused(label: Any) -> None:
    rows = read([{"key": 1, "label": label}], "regression")
    assert rows.refused == {"invalid_label": 1}
    assert "a finite number" in rows.errors[0]["message"]


def test_keys_are_checked_with_the_one_key_definition_and_kept_with_their_type() -> None:
    rows = read(
        [
            {"key": 1, "label": "x"},
            {"key": "1", "label": "x"},
            {"key": "", "label": "x"},
            {"key": 2**63, "label": "x"},
            {"key": True, "label": "x"},
            {"key": [1, 2], "label": "x"},
            {"key": 1.5, "label": "x"},
        ]
    )
    assert list(zip(rows.keys, rows.key_types, strict=True)) == [("1", "int"), ("1", "str")]
    assert rows.refused == {"invalid_key": 5}
    assert [error["index"] for error in rows.errors] == [2, 3, 4, 5, 6]
    assert "empty string" in rows.errors[0]["message"]
    assert rows.errors[0]["key"] == "" and rows.errors[3]["key"] is None  # a list: not echoed


def test_times_are_iso_8601_and_utc_without_an_offset() -> None:
    rows = read(
        [
            {"key": 1, "label": "x", "time": "2026-12-06T10:00:00"},
            {"key": 2, "label": "x", "time": "2026-12-06T10:00:00+02:00"},
            {"key": 3, "label": "x", "time": "2026-12-06T10:00:00Z"},
            {"key": 4, "label": "x", "time": "2026-12-06"},
            {"key": 5, "label": "x"},
            {"key": 6, "label": "x", "time": "yesterday"},
            {"key": 7, "label": "x", "time": 1765000000},
        ]
    )
    utc = datetime.UTC
    assert rows.times == [
        datetime.datetime(2026, 12, 6, 10, tzinfo=utc),
        datetime.datetime(2026, 12, 6, 8, tzinfo=utc),
        datetime.datetime(2026, 12, 6, 10, tzinfo=utc),
        datetime.datetime(2026, 12, 6, tzinfo=utc),
        None,
    ]
    assert rows.refused == {"invalid_time": 2}


def test_items_request_ids_and_unknown_fields_are_checked() -> None:
    rows = read(
        [
            {"key": 1, "label": "x", "request_id": "abc"},
            {"key": 2, "label": "x", "request_id": ""},
            {"key": 3, "label": "x", "request_id": 7},
            {"key": 4, "label": "x", "colour": "red"},
            {"key": 5},
            "not an object",
        ]
    )
    assert rows.request_ids == ["abc"]
    assert rows.refused == {"invalid_request_id": 2, "invalid_item": 3}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "must be an object"),
        ({"labels": {}}, "must be an object"),
        ({}, "must be an object"),
        ({"labels": [], "model": "x"}, "unknown field"),
        ({"labels": [{"key": 1, "label": "x"}] * 3}, "at most 2"),
    ],
)
def test_a_body_of_another_shape_is_refused_whole(body: Any, says: str) -> None:
    with pytest.raises(InvalidLabels, match=says):
        read_labels(body, "classification", max_labels=2)


def test_only_the_first_hundred_errors_are_listed_but_all_are_counted() -> None:
    rows = read_labels({"labels": [{"key": ""}] * 150}, "classification", max_labels=1000)
    assert rows.refused == {"invalid_item": 150} and len(rows.errors) == 100


def test_kept_labels_are_written_under_the_received_date(tmp_path: Path) -> None:
    rows = read([{"key": 1, "label": "x", "time": "2026-12-06T10:00:00"}, {"key": "", "label": 1}])
    path = write_labels(tmp_path, rows, "flowers", "req-1")
    assert path is not None
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    assert path.relative_to(tmp_path).as_posix() == f"labels/date={today}/req-1.parquet"
    table = pq.read_table(path)
    assert table.schema.names == list(layout.LABEL_COLUMNS)
    assert table.to_pylist()[0]["model"] == "flowers"
    assert write_labels(tmp_path, read([]), "flowers", "req-2") is None


@pytest.fixture
def entry(default_model: str) -> Any:
    import service

    return service.KeyedPrediction()


def with_capture_dir(monkeypatch: pytest.MonkeyPatch, capture_dir: Path | None) -> None:
    import service

    changed = service.settings.model_copy(update={"capture_dir": capture_dir})
    monkeypatch.setattr(service, "settings", changed)


def test_labels_without_a_capture_directory_are_a_404_naming_the_setting(
    entry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_capture_dir(monkeypatch, None)
    body = b'{"labels": [{"key": 1, "label": "setosa"}]}'
    response = asyncio.run(entry.labels_raw(body))
    assert response.status_code == 404
    assert "KEYED_CAPTURE_DIR" in orjson.loads(response.body)["error"]


def test_labels_are_answered_once_on_disk(
    entry: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with_capture_dir(monkeypatch, tmp_path)
    body = b'{"labels": [{"key": 1, "label": "setosa"}, {"key": null, "label": "setosa"}]}'
    response = asyncio.run(entry.labels_raw(body))
    assert response.status_code == 200
    assert orjson.loads(response.body) == {
        "accepted": 1,
        "refused": {"invalid_key": 1},
        "errors": [
            {
                "index": 1,
                "key": None,
                "reason": "invalid_key",
                "message": "labels[1].key: missing (null); " + RULE,
            }
        ],
    }
    assert len(list((tmp_path / layout.LABELS).rglob("*.parquet"))) == 1
    assert asyncio.run(entry.labels_raw(b"{")).status_code == 400
    assert asyncio.run(entry.labels_raw(b'{"labels": 1}')).status_code == 400


def test_labels_that_cannot_be_written_are_a_503_and_nothing_is_accepted(
    entry: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with_capture_dir(monkeypatch, blocker / "capture")
    response = asyncio.run(entry.labels_raw(b'{"labels": [{"key": 1, "label": "setosa"}]}'))
    assert response.status_code == 503 and response.headers["Retry-After"]
