"""keyed-evaluate's command line: exit 0 with the files asked for, or 2 with one clear line."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from captures import at, ensure_metrics, label, prediction, write_labels, write_predictions

from keyed_serving.evaluation.cli import main

ensure_metrics()
UNTIL = ["--until", at(100).isoformat()]


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A stand-in for keyed_serving.evaluation.html (another helper's module): keeps the
    reports it was given."""
    seen: list[dict[str, Any]] = []
    module = types.ModuleType("keyed_serving.evaluation.html")

    def render(report: dict[str, Any]) -> str:
        seen.append(report)
        return "<html>report</html>"

    module.render = render  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keyed_serving.evaluation.html", module)
    return seen


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    root = tmp_path / "capture"
    write_predictions(
        root,
        [
            prediction(("eu", 1), 0, "yes"),
            prediction(("eu", 2), 1, "no"),
            prediction(("us", 1), 2, "yes"),
        ],
    )
    write_labels(root, [label(("eu", 2), "no", 3)])
    return root


def test_it_writes_the_report_the_json_and_the_joined_pairs(
    tmp_path: Path,
    capture: Path,
    rendered: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    labels = tmp_path / "truth.parquet"  # Parquet: the integer parts of keys stay integers
    pd.DataFrame(
        {"region": ["eu", "us", "zz"], "id": [1, 1, 9], "churned": ["yes", "no", "no"]}
    ).to_parquet(labels)
    out = tmp_path / "report.html"

    status = main(
        [
            str(capture),
            *("--labels", str(labels), "--key", "region,id", "--label", "churned"),
            *("--out", str(out), "--json", str(tmp_path / "report.json")),
            *("--joined", str(tmp_path / "joined.parquet"), *UNTIL),
        ]
    )

    assert status == 0
    assert out.read_text() == "<html>report</html>"
    report = json.loads((tmp_path / "report.json").read_text())
    assert rendered == [report]
    assert report["versions"]["v1"]["labelled"] == 3
    assert report["diagnostics"]["orphan_labels"] == 1
    joined = pq.read_table(tmp_path / "joined.parquet").to_pandas()
    # a CSV's key cells are text: ["eu","1"], as keyed-score sends them
    assert sorted(zip(joined["key"], joined["label"], strict=True)) == [
        ('["eu",1]', "yes"),
        ('["eu",2]', "no"),
        ('["us",1]', "no"),
    ]
    assert "version v1" in capsys.readouterr().out


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line keyed-evaluate wrote when it exited 2."""
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_capture_without_predictions_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    message = error_of(capsys, str(tmp_path / "empty"), "--out", str(tmp_path / "r.html"))
    assert "holds no predictions" in message


def test_predictions_all_outside_since_until_are_refused(
    tmp_path: Path, capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = error_of(
        capsys, str(capture), "--out", str(tmp_path / "r.html"), "--until", "2020-01-01"
    )
    assert "no predictions" in message


def test_a_missing_label_column_is_named(
    tmp_path: Path, capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "truth.jsonl"
    labels.write_text('{"region": "eu", "id": 1, "outcome": "yes"}\n')
    message = error_of(
        capsys,
        str(capture),
        *("--labels", str(labels), "--key", "region,id", "--label", "churned"),
        *("--out", str(tmp_path / "r.html")),
    )
    assert "no column 'churned'" in message


def test_text_labels_for_a_regressor_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "capture"
    write_predictions(root, [prediction("a", 0, 3.5)], task="regression", classes=None)
    labels = tmp_path / "truth.csv"
    labels.write_text("id,amount\na,high\n")
    message = error_of(
        capsys,
        str(root),
        *("--labels", str(labels), "--key", "id", "--label", "amount"),
        *("--out", str(tmp_path / "r.html")),
    )
    assert "regressor" in message and "'high'" in message


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--engine", "postgres"], "--engine 'postgres': one of duckdb, spark"),
        (["--window", "month"], "--window 'month'"),
        (["--policy", "middle"], "--policy 'middle'"),
        (["--max-delay", "soon"], "--max-delay 'soon'"),
        (["--since", "yesterday"], "--since 'yesterday'"),
        (["--key", "id"], "--key names a column of --labels"),
    ],
)
def test_unusable_options_exit_2_with_one_line(
    tmp_path: Path,
    capture: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    expected: str,
) -> None:
    message = error_of(capsys, str(capture), "--out", str(tmp_path / "r.html"), *options)
    assert expected in message
    assert not (tmp_path / "r.html").exists()


def test_labels_without_key_and_label_columns_are_refused(
    tmp_path: Path, capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "truth.csv"
    labels.write_text("id,churned\n1,yes\n")
    message = error_of(
        capsys, str(capture), "--labels", str(labels), "--out", str(tmp_path / "r.html")
    )
    assert "--labels needs --key and --label" in message
