"""keyed-evaluate as a stranger runs it: the mistakes one makes first (a typo in the path,
--since after --until, a label file whose keys are of another type than the predictions')
answered with a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from captures import at, ensure_metrics, prediction, write_predictions

from keyed_serving.evaluation.cli import main

ensure_metrics()
UNTIL = ["--until", at(100).isoformat()]


def evaluate(*args: object, tmp_path: Path) -> int:
    out = ["--out", str(tmp_path / "report.html"), "--json", str(tmp_path / "report.json")]
    return main([*map(str, args), *out])


def test_since_after_until_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "capture"
    write_predictions(root, [prediction("a", 1)])
    since, until = at(50).isoformat(), at(10).isoformat()
    assert evaluate(root, "--since", since, "--until", until, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "--since" in said and "after --until" in said


def test_a_capture_directory_that_does_not_exist_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate(tmp_path / "captuer", *UNTIL, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "no such directory" in said
