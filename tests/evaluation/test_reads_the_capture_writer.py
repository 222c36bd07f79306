"""keyed-evaluate reads what the capture's own writer (keyed_serving.capture.files, the one
the server and score_spark write through) writes: integer classes as their text, integer,
string and composite keys apart, errors and refused keys as failed predictions."""

from __future__ import annotations

import datetime
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from captures import ensure_metrics

from keyed_serving.capture.files import Captured, CapturedModel, captured_table, write_predictions
from keyed_serving.evaluation.cli import main
from keyed_serving.schemas import FeatureInfo

ensure_metrics()
T0 = datetime.datetime(2026, 5, 4, 9, 30, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True)
def html(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("keyed_serving.evaluation.html")
    module.render = lambda report: "<html></html>"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keyed_serving.evaluation.html", module)


def test_the_writers_capture_is_joined_by_typed_key_and_class_text(tmp_path: Path) -> None:
    model = CapturedModel(
        "fraud", "20260504", "classification", (0, 1), (FeatureInfo(name="amount", type="number"),)
    )
    batches = [
        Captured(
            request_id="req-1",
            source="predict",
            ts=T0,
            keys=[7, "7", 8],
            columns=[[10.0, 20.0, 30.0]],
            predictions=[1, 0, None],
            probabilities=np.array([[0.1, 0.9], [0.8, 0.2], [np.nan, np.nan]]),
            errors={2: ("model_error", "it raised")},
            refused=[("", "invalid_key", "empty string")],
        ),
        Captured(
            request_id="req-2",
            source="predict",
            ts=T0 + datetime.timedelta(hours=2),
            keys=[7],
            columns=[[11.0]],
            predictions=[0],
            probabilities=np.array([[0.6, 0.4]]),
        ),
    ]
    root = tmp_path / "capture"
    write_predictions(root, model, captured_table(model, batches))
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"id": 7, "fraud": 1, "at": "2026-05-04T10:00:00Z"},  # before req-2: req-1's
                {"id": "7", "fraud": 0},  # the string key: its own prediction
                {"id": 8, "fraud": 1},  # the failed one
            ]
        )
    )

    status = main(
        [
            str(root),
            *("--labels", str(labels), "--key", "id", "--label", "fraud", "--time", "at"),
            *("--out", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")),
            *("--until", "2026-05-05"),
        ]
    )

    assert status == 0
    report: dict[str, Any] = json.loads((tmp_path / "r.json").read_text())
    assert (report["model"], report["classes"]) == ("fraud", ["0", "1"])
    version = report["versions"]["20260504"]
    # 3 + 1 answered, 1 refused; 2 failed (the model's error, the refused key)
    assert (version["predictions"], version["failed"], version["labelled"]) == (5, 2, 2)
    assert version["metrics"]["accuracy"]["value"] == 1.0
    assert report["diagnostics"]["labelled_failed"] == 1
    assert report["diagnostics"]["keys_predicted_more_than_once"] == 1
